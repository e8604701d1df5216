"""What the document layer costs beside the model: reading and rebuilding each format.

    python bench/documents.py --paragraphs 500

Builds a document of N paragraphs per format with the tests' builders' libraries (each
paragraph one sentence with a bold or italic run), then times, median of 5: opening it
(the ZIP checks and the library's parse), handing out its texts, and rebuilding it with
translations (here each text upper-cased, so the model's time is left out).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import median_ms  # noqa: E402
from service.api.documents import Document  # noqa: E402

SENTENCE = "A man in a {} shirt is playing a guitar on the street."
COLOURS = ("red", "blue", "green", "black", "white")


def docx_file(n: int) -> bytes:
    import docx

    document = docx.Document()
    for i in range(n):
        p = document.add_paragraph("A man in a ")
        p.add_run(f"{COLOURS[i % 5]} shirt").bold = True
        p.add_run(" is playing a guitar on the street.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx_file(n: int) -> bytes:
    import pptx

    presentation = pptx.Presentation()
    for start in range(0, n, 10):
        body = presentation.slides.add_slide(presentation.slide_layouts[1]).placeholders[1].text_frame
        for i in range(start, min(n, start + 10)):
            p = body.paragraphs[0] if i == start else body.add_paragraph()
            p.text = SENTENCE.format(COLOURS[i % 5])
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def odt_file(n: int) -> bytes:
    from odf.opendocument import OpenDocumentText
    from odf.style import Style, TextProperties
    from odf.text import P, Span

    document = OpenDocumentText()
    bold = Style(name="Bold", family="text")
    bold.addElement(TextProperties(fontweight="bold"))
    document.automaticstyles.addElement(bold)
    for i in range(n):
        p = P(text="A man in a ")
        p.addElement(Span(stylename=bold, text=f"{COLOURS[i % 5]} shirt"))
        p.addText(" is playing a guitar on the street.")
        document.text.addElement(p)
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def epub_file(n: int) -> bytes:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("bench")
    book.set_title("Bench")
    book.set_language("en")
    chapter = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    chapter.content = "".join(f"<p>A man in a <b>{COLOURS[i % 5]} shirt</b> plays.</p>" for i in range(n))
    book.add_item(chapter)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = [chapter]
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


def html_file(n: int) -> bytes:
    return "".join(f"<p>A man in a <b>{COLOURS[i % 5]} shirt</b> plays.</p>" for i in range(n)).encode()


BUILDERS: dict[str, Callable[[int], bytes]] = {
    ".docx": docx_file,
    ".pptx": pptx_file,
    ".odt": odt_file,
    ".epub": epub_file,
    ".html": html_file,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paragraphs", type=int, default=500)
    args = parser.parse_args()
    print("| format | file bytes | texts | open ms | texts ms | rebuild ms |\n|---|---|---|---|---|---|")
    for suffix, build in BUILDERS.items():
        raw = build(args.paragraphs)
        document = Document(suffix, raw)
        texts = document.texts()
        translations = [t.upper() for t in texts]

        def parse(raw: bytes = raw, suffix: str = suffix) -> Document:
            return Document(suffix, raw)

        def rebuild(raw: bytes = raw, suffix: str = suffix, out: list[str] = translations) -> bytes:
            return Document(suffix, raw).render(out)

        open_ms = median_ms(parse)
        texts_ms = median_ms(document.texts)
        rebuild_ms = median_ms(rebuild) - open_ms
        print(f"| {suffix} | {len(raw):,} | {len(texts)} | {open_ms:.0f} | {texts_ms:.0f} | {rebuild_ms:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
