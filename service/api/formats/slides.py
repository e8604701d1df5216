"""PowerPoint presentations (.pptx) with python-pptx: every slide's shapes, tables and groups, and its notes."""

from __future__ import annotations

import io

import pptx
from lxml import etree

from service.api.formats import ooxml
from service.api.formats.archive import open_archive
from service.api.formats.errors import DocumentError
from service.api.formats.runs import Item, ParagraphDocument


class Presentation(ParagraphDocument[etree._Element, ooxml.Style, ooxml.Kept]):
    def __init__(self, raw: bytes) -> None:
        open_archive(raw, "PowerPoint presentation (.pptx)")
        try:
            self.presentation = pptx.Presentation(io.BytesIO(raw))
        except Exception as exc:  # a library failing on untrusted input, in any way, means a bad file
            raise DocumentError(f"file is not a valid PowerPoint presentation (.pptx): {exc}") from None
        self.paragraphs: list[tuple[etree._Element, ooxml.OoxmlParagraph]] = []
        for slide in self.presentation.slides:
            roots = [slide.element]
            if slide.has_notes_slide:
                roots.append(slide.notes_slide.element)
            for root in roots:
                for p in root.iter(ooxml.DRAWING.paragraph):
                    self.paragraphs.append((p, ooxml.read_paragraph(p, ooxml.DRAWING)))

    def write_paragraph(self, element: etree._Element, items: list[Item[ooxml.Style, ooxml.Kept]]) -> None:
        ooxml.write_paragraph(element, ooxml.DRAWING, items)

    def save(self) -> bytes:
        out = io.BytesIO()
        self.presentation.save(out)
        return out.getvalue()
