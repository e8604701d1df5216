"""Word documents (.docx) with python-docx: body, tables, text boxes, headers, footers and notes."""

from __future__ import annotations

import io

import docx
from docx.opc.constants import CONTENT_TYPE as CT
from docx.opc.part import PartFactory, XmlPart
from lxml import etree

from service.api.formats import ooxml
from service.api.formats.archive import open_archive
from service.api.formats.errors import DocumentError
from service.api.formats.runs import Item, ParagraphDocument

# The parts whose paragraphs are the document's text. python-docx reads notes as opaque parts;
# registered as XML parts, they are parsed and written back like the body.
TEXT_PARTS = frozenset({CT.WML_DOCUMENT_MAIN, CT.WML_HEADER, CT.WML_FOOTER, CT.WML_FOOTNOTES, CT.WML_ENDNOTES})
for _content_type in (CT.WML_FOOTNOTES, CT.WML_ENDNOTES):
    PartFactory.part_type_for.setdefault(_content_type, XmlPart)


class WordDocument(ParagraphDocument[etree._Element, ooxml.Style, ooxml.Kept]):
    def __init__(self, raw: bytes) -> None:
        open_archive(raw, "Word document (.docx)")
        try:
            self.document = docx.Document(io.BytesIO(raw))
        except Exception as exc:  # a library failing on untrusted input, in any way, means a bad file
            raise DocumentError(f"file is not a valid Word document (.docx): {exc}") from None
        self.paragraphs: list[tuple[etree._Element, ooxml.OoxmlParagraph]] = []
        for part in self.document.part.package.iter_parts():
            if part.content_type in TEXT_PARTS and isinstance(part, XmlPart):
                for p in part.element.iter(ooxml.WORD.paragraph):
                    self.paragraphs.append((p, ooxml.read_paragraph(p, ooxml.WORD)))

    def write_paragraph(self, element: etree._Element, items: list[Item[ooxml.Style, ooxml.Kept]]) -> None:
        ooxml.write_paragraph(element, ooxml.WORD, items)

    def save(self) -> bytes:
        out = io.BytesIO()
        self.document.save(out)
        return out.getvalue()
