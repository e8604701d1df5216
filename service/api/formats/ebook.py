"""EPUB books with ebooklib: each XHTML content document goes through the HTML engine.

ebooklib reads the package (container, OPF manifest); the translated book is the original ZIP
with those documents replaced, every other entry (styles, images, fonts, the OPF itself) copied
byte for byte and the uncompressed `mimetype` entry first, as EPUB requires.
"""

from __future__ import annotations

import io
import posixpath
import zipfile

import ebooklib
from ebooklib import epub
from lxml import etree

from service.api.formats.archive import inside, open_archive
from service.api.formats.errors import DocumentError
from service.api.markup import HtmlDocument, TextLimitExceeded

_CONTAINER = "META-INF/container.xml"
_XHTML = "application/xhtml+xml"


def _package_dir(archive: zipfile.ZipFile) -> str:
    try:
        root = etree.fromstring(archive.read(_CONTAINER), etree.XMLParser(resolve_entities=False, no_network=True))
    except (KeyError, etree.XMLSyntaxError) as exc:
        raise DocumentError(f"file is not a valid EPUB: {_CONTAINER} ({exc})") from None
    paths = root.xpath("//*[local-name()='rootfile']/@full-path")
    if not paths:
        raise DocumentError(f"file is not a valid EPUB: {_CONTAINER} names no package document")
    return posixpath.dirname(inside("", str(paths[0])))


class Ebook:
    def __init__(self, raw: bytes) -> None:
        self.archive = open_archive(raw, "EPUB book")
        if (
            self.archive.namelist()[:1] != ["mimetype"]
            or self.archive.read("mimetype").strip() != b"application/epub+zip"
        ):
            raise DocumentError("file is not a valid EPUB: it must start with the mimetype application/epub+zip")
        base = _package_dir(self.archive)
        try:
            book = epub.read_epub(io.BytesIO(raw), options={"ignore_ncx": True})
        except Exception as exc:  # a library failing on untrusted input, in any way, means a bad file
            raise DocumentError(f"file is not a valid EPUB: {exc}") from None
        names = set(self.archive.namelist())
        self.documents: dict[str, HtmlDocument] = {}
        for item in book.get_items():
            if item.media_type != _XHTML or item.get_type() not in (ebooklib.ITEM_DOCUMENT, ebooklib.ITEM_NAVIGATION):
                continue
            name = inside(base, item.get_name())
            if name not in names:
                raise DocumentError(f"file is not a valid EPUB: the manifest names {name!r}, which it does not hold")
            try:
                text = self.archive.read(name).decode("utf-8-sig")
            except UnicodeDecodeError:
                raise DocumentError(f"file is not a valid EPUB: {name!r} is not UTF-8") from None
            self.documents[name] = HtmlDocument(text)
        self._counts: dict[str, int] = {}  # texts per document, once texts() has made them

    def texts(self, limit: int | None = None) -> list[str]:
        """Every document's texts in order; with `limit`, TextLimitExceeded past that many characters."""
        out: list[str] = []
        total = 0
        for name, document in self.documents.items():
            try:
                own = document.texts(None if limit is None else limit - total)
            except TextLimitExceeded as exc:
                raise TextLimitExceeded(total + exc.characters) from None
            self._counts[name] = len(own)
            total += sum(len(text) for text in own)
            out.extend(own)
        return out

    def render(self, translations: list[str]) -> bytes:
        if len(self._counts) != len(self.documents):
            self.texts()
        start = 0
        rendered: dict[str, bytes] = {}
        for name, document in self.documents.items():
            count = self._counts[name]
            rendered[name] = document.render(translations[start : start + count]).encode("utf-8")
            start += count
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as book:
            for entry in self.archive.infolist():
                book.writestr(entry, rendered.get(entry.filename, self.archive.read(entry.filename)))
        return out.getvalue()
