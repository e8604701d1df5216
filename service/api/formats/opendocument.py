"""OpenDocument text (.odt) and presentations (.odp) with odfpy: body, frames, tables, notes, headers and footers."""

from __future__ import annotations

import io
from typing import Any, TypeAlias

from odf import teletype
from odf.element import Element, Node
from odf.namespaces import TEXTNS
from odf.opendocument import load
from odf.text import H, P

from service.api.formats.archive import open_archive
from service.api.formats.errors import DocumentError
from service.api.formats.runs import Item, ParagraphDocument, RunParagraph, Text, Void

MIMETYPES = {
    ".odt": ("application/vnd.oasis.opendocument.text", "OpenDocument text (.odt)"),
    ".odp": ("application/vnd.oasis.opendocument.presentation", "OpenDocument presentation (.odp)"),
}
_CONTAINERS = frozenset({(TEXTNS, "span"), (TEXTNS, "a")})
_SPACES = (TEXTNS, "s")

Style: TypeAlias = tuple[Any, ...]  # the spans and links around a run of text, outer first
OdfParagraph: TypeAlias = RunParagraph[Style, Any]


def _key(chain: Style) -> tuple[object, ...]:
    return tuple((e.qname, tuple(sorted(e.attributes.items()))) for e in chain)


def read_paragraph(p: Any) -> OdfParagraph:
    items: list[Item[Style, Any]] = []

    def walk(parent: Any, chain: Style) -> None:
        for child in parent.childNodes:
            if child.nodeType == Node.TEXT_NODE:
                items.append(Text(str(child.data), _key(chain), chain))
            elif child.nodeType != Node.ELEMENT_NODE:
                continue
            elif child.qname in _CONTAINERS:
                walk(child, (*chain, child))
            elif child.qname == _SPACES:
                count = int(child.attributes.get((TEXTNS, "c"), "1") or 1)
                items.append(Text(" " * count, _key(chain), chain))
            else:  # tabs, line breaks, notes, frames, fields, bookmarks: kept whole
                items.append(Void(child))

    walk(p, ())
    return RunParagraph(items)


def _detach(node: Any) -> None:
    parent = node.parentNode
    if parent is None:
        return
    if node.nodeType == Node.ELEMENT_NODE:
        parent.removeChild(node)
    else:  # odfpy's removeChild updates its element caches and refuses text nodes
        parent.childNodes.remove(node)
        node.parentNode = None


def write_paragraph(p: Any, items: list[Item[Style, Any]]) -> None:
    for child in list(p.childNodes):
        _detach(child)
    for item in items:
        if isinstance(item, Void):
            _detach(item.item)  # it may sit inside a span that is gone
            p.appendChild(item.item)
            continue
        parent = p
        for template in item.style:
            shell = Element(qname=template.qname, qattributes=dict(template.attributes), check_grammar=False)
            parent.appendChild(shell)
            parent = shell
        teletype.addTextToElement(parent, item.text)  # runs of spaces, tabs and newlines as ODF writes them


class OpenDocument(ParagraphDocument[Any, Style, Any]):
    def __init__(self, raw: bytes, suffix: str) -> None:
        mimetype, kind = MIMETYPES[suffix]
        archive = open_archive(raw, kind)
        names = set(archive.namelist())
        declared = archive.read("mimetype").decode("ascii", "replace").strip() if "mimetype" in names else ""
        if declared != mimetype:
            raise DocumentError(f"file is not a valid {kind}: its mimetype is {declared or 'missing'!r}")
        if "META-INF/manifest.xml" in names and b"encryption-data" in archive.read("META-INF/manifest.xml"):
            raise DocumentError(f"file is encrypted (password-protected): {kind} cannot be read")
        try:
            self.document = load(io.BytesIO(raw))
        except Exception as exc:  # a library failing on untrusted input, in any way, means a bad file
            raise DocumentError(f"file is not a valid {kind}: {exc}") from None
        elements = [*self.document.getElementsByType(P), *self.document.getElementsByType(H)]
        self.paragraphs: list[tuple[Any, OdfParagraph]] = [(p, read_paragraph(p)) for p in elements]

    def write_paragraph(self, element: Any, items: list[Item[Style, Any]]) -> None:
        write_paragraph(element, items)

    def save(self) -> bytes:
        out = io.BytesIO()
        self.document.write(out)
        return out.getvalue()
