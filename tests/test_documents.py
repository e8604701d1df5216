"""/translate_file with the committed model on documents built with each format's own library.

Each test builds a document, sends it through the real route, downloads the result and reads it
back with the same library: the text is translated, and every style, run, table cell, link,
image and timing is still there. The .docx, .odt and .pptx results are also converted with
headless LibreOffice to PDF, whose page 1 is rendered to tests/artifacts/<name>.png for a person
to look at.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx
import pptx
import pytest
from docx.enum.text import WD_COLOR_INDEX
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.oxml import parse_xml
from docx.shared import Pt, RGBColor
from ebooklib import epub
from fastapi.testclient import TestClient
from odf import teletype
from odf.draw import Frame, Page, TextBox
from odf.opendocument import OpenDocumentPresentation, OpenDocumentText, load
from odf.style import MasterPage, PageLayout, Style, TextProperties
from odf.table import Table, TableCell, TableColumn, TableRow
from odf.text import A, H, LineBreak, P, Span
from PIL import Image
from pptx.enum.shapes import MSO_SHAPE_TYPE
from pptx.util import Inches

from service.api.app import create_app
from service.api.settings import Settings

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EN_FR = {"source": "en", "target": "fr"}
FRENCH = frozenset(
    [
        "un",
        "une",
        "des",
        "le",
        "la",
        "les",
        "du",
        "deux",
        "homme",
        "chien",
        "guitare",
        "rue",
        "femme",
        "joue",
        "rouge",
        "enfant",
    ]
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as c:
        yield c


def translate_file(client: TestClient, name: str, content: bytes) -> bytes:
    r = client.post("/translate_file", data=EN_FR, files={"file": (name, content)})
    assert r.status_code == 200, r.text
    download = client.get(r.json()["translatedFileUrl"])
    assert download.status_code == 200
    stem, ext = name.rsplit(".", 1)
    assert download.headers["content-disposition"] == f'attachment; filename="{stem}_fr.{ext}"'
    return download.content


def french(text: str) -> bool:
    return bool(FRENCH & set(re.findall(r"\w+", text.lower())))


def render_page_one(name: str, content: bytes, tmp_path: Path) -> None:
    """Headless LibreOffice to PDF, then page 1 to PNG: the result opens and a person can look at it."""
    soffice, pdftoppm = shutil.which("soffice"), shutil.which("pdftoppm")
    if soffice is None or pdftoppm is None:
        pytest.skip("needs LibreOffice and poppler (make test installs them)")
    source = tmp_path / name
    source.write_bytes(content)
    profile = (tmp_path / "profile").as_uri()
    subprocess.run(
        [soffice, f"-env:UserInstallation={profile}", "--headless", "--convert-to", "pdf", "--outdir", str(tmp_path),
         str(source)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    pdf = source.with_suffix(".pdf")
    assert pdf.exists() and pdf.stat().st_size > 1000, "LibreOffice could not convert the translated file"
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / name.replace(".", "-")
    subprocess.run([pdftoppm, "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(png)],
                   check=True, timeout=60)  # fmt: skip
    assert png.with_suffix(".png").stat().st_size > 1000


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


# ---- Word


def build_docx() -> bytes:
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "A man is walking down the street."
    document.sections[0].footer.paragraphs[0].text = "Two dogs are playing in the snow."
    document.add_heading("A man is playing a guitar.", level=1)
    p = document.add_paragraph("A woman in a ")
    red = p.add_run("red dress")
    red.bold, red.font.color.rgb = True, RGBColor(0xC0, 0x00, 0x00)
    p.add_run(" is walking down the street.")
    styled = document.add_paragraph("A child is playing in the water.", style="List Bullet")
    styled.runs[0].font.size = Pt(14)
    marked = document.add_paragraph().add_run("Two men are sitting on a bench.")
    marked.font.highlight_color = WD_COLOR_INDEX.YELLOW
    table = document.add_table(rows=2, cols=2)
    table.style = "Table Grid"
    for cell, text in zip(
        [c for row in table.rows for c in row.cells],
        ["A dog is running.", "A man is sleeping.", "Two women are talking.", "A boy is jumping."],
        strict=True,
    ):
        cell.text = text
    document.add_picture(io.BytesIO(png_bytes()), width=Inches(1))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_a_word_document_keeps_its_styles_runs_tables_and_pictures(client: TestClient, tmp_path: Path) -> None:
    result = translate_file(client, "report.docx", build_docx())
    document = docx.Document(io.BytesIO(result))
    heading, para, bullet, marked = document.paragraphs[:4]
    assert heading.style is not None and heading.style.name == "Heading 1" and "guitare" in heading.text
    assert (
        bullet.style is not None
        and bullet.style.name == "List Bullet"
        and bullet.runs[0].font.size == Pt(14)
        and french(bullet.text)
    )
    assert french(para.text) and "A woman" not in para.text
    bold = [r for r in para.runs if r.bold]
    assert len(bold) == 1 and bold[0].font.color.rgb == RGBColor(0xC0, 0x00, 0x00) and "rouge" in bold[0].text.lower()
    assert [r.bold for r in para.runs].count(None) >= 1  # the rest of the sentence stays plain
    assert marked.runs[0].font.highlight_color == WD_COLOR_INDEX.YELLOW and french(marked.text)
    cells = [c.text for row in document.tables[0].rows for c in row.cells]
    assert (
        len(cells) == 4
        and all(french(c) for c in cells)
        and getattr(document.tables[0].style, "name", "") == "Table Grid"
    )
    assert french(document.sections[0].header.paragraphs[0].text)
    assert french(document.sections[0].footer.paragraphs[0].text)
    assert len(document.inline_shapes) == 1
    render_page_one("report_fr.docx", result, tmp_path)


def test_a_word_hyperlink_keeps_its_target(client: TestClient) -> None:
    document = docx.Document()
    p = document.add_paragraph("A man is reading ")
    rel = document.part.relate_to("https://example.org/news", RT.HYPERLINK,
                                  is_external=True)  # fmt: skip
    link = parse_xml(
        f'<w:hyperlink xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
        f'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" r:id="{rel}">'
        '<w:r><w:rPr><w:u w:val="single"/></w:rPr><w:t>the newspaper</w:t></w:r></w:hyperlink>'
    )
    p._p.append(link)
    out = io.BytesIO()
    document.save(out)
    result = docx.Document(io.BytesIO(translate_file(client, "link.docx", out.getvalue())))
    links = result.paragraphs[0].hyperlinks
    assert len(links) == 1 and links[0].address == "https://example.org/news" and links[0].text.strip()
    assert "homme" in result.paragraphs[0].text


# ---- PowerPoint


def build_pptx() -> bytes:
    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "A man is playing a guitar."
    body = slide.placeholders[1].text_frame
    body.text = "A dog is running "
    run = body.paragraphs[0].add_run()
    run.text, run.font.italic = "in the snow.", True
    body.add_paragraph().text = "Two women are talking."
    rows = slide.shapes.add_table(2, 2, Inches(1), Inches(4), Inches(6), Inches(1.5)).table
    for cell, text in zip([c for r in rows.rows for c in r.cells],
                          ["A red car.", "A small child.", "A big dog.", "A young woman."], strict=True):  # fmt: skip
        cell.text = text
    slide.shapes.add_picture(io.BytesIO(png_bytes()), Inches(8), Inches(1), Inches(1))
    slide.notes_slide.notes_text_frame.text = "A man is sitting on a bench."
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def test_a_presentation_keeps_its_runs_tables_pictures_and_notes(client: TestClient, tmp_path: Path) -> None:
    result = translate_file(client, "talk.pptx", build_pptx())
    slide = pptx.Presentation(io.BytesIO(result)).slides[0]
    assert "guitare" in slide.shapes.title.text
    body = slide.placeholders[1].text_frame.paragraphs
    assert len(body) == 2 and all(french(p.text) for p in body)
    italic = [r for r in body[0].runs if r.font.italic]
    assert len(italic) == 1 and "neige" in italic[0].text.lower()
    table = next(s for s in slide.shapes if s.has_table).table
    assert all(french(c.text) for r in table.rows for c in r.cells)
    assert [s.shape_type for s in slide.shapes].count(MSO_SHAPE_TYPE.PICTURE) == 1
    assert french(slide.notes_slide.notes_text_frame.text)
    render_page_one("talk_fr.pptx", result, tmp_path)


# ---- OpenDocument


def build_odt() -> bytes:
    document = OpenDocumentText()
    bold = Style(name="Bold", family="text")
    bold.addElement(TextProperties(fontweight="bold", color="#c00000"))
    document.automaticstyles.addElement(bold)
    layout = PageLayout(name="Page")
    document.automaticstyles.addElement(layout)
    master = MasterPage(name="Standard", pagelayoutname=layout)
    document.masterstyles.addElement(master)
    document.text.addElement(H(outlinelevel=1, text="A man is playing a guitar."))
    p = P(text="A woman in a ")
    p.addElement(Span(stylename=bold, text="red dress"))
    p.addText(" is walking down the street.")
    p.addElement(LineBreak())
    p.addElement(A(href="https://example.org", type="simple", text="A dog is running."))
    document.text.addElement(p)
    table = Table(name="T")
    table.addElement(TableColumn(numbercolumnsrepeated=2))
    for texts in (["A boy is jumping.", "Two men are talking."], ["A child is sleeping.", "A girl is reading."]):
        row = TableRow()
        for text in texts:
            cell = TableCell()
            cell.addElement(P(text=text))
            row.addElement(cell)
        table.addElement(row)
    document.text.addElement(table)
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def test_an_opendocument_text_keeps_its_spans_links_and_tables(client: TestClient, tmp_path: Path) -> None:
    result = translate_file(client, "letter.odt", build_odt())
    document = load(io.BytesIO(result))
    heading = document.getElementsByType(H)[0]
    assert "guitare" in teletype.extractText(heading)
    paragraphs = document.getElementsByType(P)
    body = paragraphs[0]
    spans = body.getElementsByType(Span)
    assert len(spans) == 1 and spans[0].getAttribute("stylename") == "Bold"
    assert "rouge" in teletype.extractText(spans[0]).lower()
    links = body.getElementsByType(A)
    assert len(links) == 1 and links[0].getAttribute("href") == "https://example.org"
    assert len(body.getElementsByType(LineBreak)) == 1
    assert french(teletype.extractText(body)) and "woman" not in teletype.extractText(body)
    cells = [teletype.extractText(p) for p in paragraphs[1:]]
    assert len(cells) == 4 and all(french(c) for c in cells)
    render_page_one("letter_fr.odt", result, tmp_path)


def test_an_opendocument_presentation_is_translated(client: TestClient) -> None:
    document = OpenDocumentPresentation()
    layout = PageLayout(name="Slide")
    document.automaticstyles.addElement(layout)
    master = MasterPage(name="Default", pagelayoutname=layout)
    document.masterstyles.addElement(master)
    page = Page(masterpagename=master)
    frame = Frame(width="20cm", height="3cm", x="2cm", y="2cm")
    box = TextBox()
    box.addElement(P(text="A man is playing a guitar."))
    box.addElement(P(text="Two dogs are running in the snow."))
    frame.addElement(box)
    page.addElement(frame)
    document.presentation.addElement(page)
    out = io.BytesIO()
    document.write(out)
    result = load(io.BytesIO(translate_file(client, "deck.odp", out.getvalue())))
    texts = [teletype.extractText(p) for p in result.getElementsByType(P)]
    assert len(texts) == 2 and "guitare" in texts[0] and "chien" in texts[1]
    assert len(result.getElementsByType(Frame)) == 1


# ---- EPUB


def build_epub() -> bytes:
    book = epub.EpubBook()
    book.set_identifier("mtserve-test")
    book.set_title("A walk in the park")
    book.set_language("en")
    style = epub.EpubItem(uid="css", file_name="style.css", media_type="text/css", content=b"p { color: #333; }")
    book.add_item(style)
    chapter = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    chapter.content = (
        '<h1>A man is playing a guitar.</h1><p class="lead">A woman in a <b>red dress</b> is walking.</p>'
        '<p><img src="dot.png" alt=""/>Two dogs are running in the snow.</p>'
    )
    chapter.add_item(style)
    book.add_item(chapter)
    book.add_item(epub.EpubItem(uid="img", file_name="dot.png", media_type="image/png", content=png_bytes()))
    book.toc = [chapter]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", chapter]
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


def test_an_epub_keeps_its_markup_and_every_other_entry(client: TestClient) -> None:
    original = build_epub()
    result = translate_file(client, "book.epub", original)
    before, after = zipfile.ZipFile(io.BytesIO(original)), zipfile.ZipFile(io.BytesIO(result))
    assert after.namelist() == before.namelist() and after.infolist()[0].compress_type == zipfile.ZIP_STORED
    changed = [n for n in before.namelist() if before.read(n) != after.read(n)]
    assert changed == ["EPUB/one.xhtml", "EPUB/nav.xhtml"] or set(changed) == {"EPUB/one.xhtml", "EPUB/nav.xhtml"}
    book = epub.read_epub(io.BytesIO(result))
    chapter = book.get_item_with_href("one.xhtml").get_content().decode()
    assert "guitare" in chapter and "chien" in chapter and '<p class="lead">' in chapter
    assert "<b>" in chapter and '<img src="dot.png" alt=""/>' in chapter


def test_an_epub_the_library_cannot_read_is_a_400(client: TestClient) -> None:
    book = epub.EpubBook()
    book.set_identifier("broken")
    chapter = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    chapter.content = "<p>A dog runs.</p>"
    book.add_item(chapter)
    book.spine = [chapter]  # a table of contents named in the spine that the book does not hold
    out = io.BytesIO()
    epub.write_epub(out, book)
    r = client.post("/translate_file", data=EN_FR, files={"file": ("broken.epub", out.getvalue())})
    assert r.status_code == 400 and "not a valid EPUB" in r.json()["error"]
