"""Documents for /translate_file: each format hands out its texts and is rebuilt with their translations.

One markup engine (service/api/markup.py): HTML and EPUB documents go through it as the
`format=html` route does, and the office formats (service/api/formats/) read each paragraph as
styled runs that become its spans. A subtitle file keeps its numbering and timings, only each
cue's text is translated. A file that does not parse as its extension says is a DocumentError
(a 400 naming the problem), before any text reaches the model: never a partly translated file.
"""

from __future__ import annotations

from pathlib import PurePath

import srt

from service.api.formats.ebook import Ebook
from service.api.formats.errors import DocumentError
from service.api.formats.opendocument import OpenDocument
from service.api.formats.slides import Presentation
from service.api.formats.word import WordDocument
from service.api.markup import HtmlDocument, TextLimitExceeded

# The formats /translate_file takes, with the media type their translations are served as.
MEDIA_TYPES = {  # in the order LibreTranslate's /frontend/settings lists them
    ".txt": "text/plain; charset=utf-8",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".epub": "application/epub+zip",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".srt": "application/x-subrip; charset=utf-8",
}
FORMATS = tuple(MEDIA_TYPES)
__all__ = ["FORMATS", "MEDIA_TYPES", "Document", "DocumentError", "document_format", "translated_name"]


def translated_name(name: str, target: str) -> str:
    """`<stem>_<target><ext>`, as argos-translate-files names LibreTranslate's translated files."""
    path = PurePath(name)
    return f"{path.stem}_{target}{path.suffix}"


def _text(raw: bytes, kind: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentError(f"file is not UTF-8 {kind}") from None


class Document:
    """A parsed file: `texts` to translate and `render` to rebuild it with their translations."""

    def __init__(self, suffix: str, raw: bytes) -> None:
        self.suffix = suffix
        self._html: HtmlDocument | None = None
        self._package: WordDocument | Presentation | OpenDocument | Ebook | None = None
        self._cues: list[srt.Subtitle] = []
        self._plain = ""
        if suffix == ".docx":
            self._package = WordDocument(raw)
        elif suffix == ".pptx":
            self._package = Presentation(raw)
        elif suffix in (".odt", ".odp"):
            self._package = OpenDocument(raw, suffix)
        elif suffix == ".epub":
            self._package = Ebook(raw)
        elif suffix == ".txt":
            self._plain = _text(raw, "text")
        elif suffix in (".html", ".htm"):
            self._html = HtmlDocument(_text(raw, "HTML"))
        elif suffix == ".srt":
            try:
                self._cues = list(srt.parse(_text(raw, "subtitles")))
            except srt.SRTParseError as exc:
                raise DocumentError(f"file is not valid SRT subtitles ({exc})") from None
        else:
            raise DocumentError(f"file format {suffix} is not supported")

    def texts(self, limit: int | None = None) -> list[str]:
        """The texts to translate; with `limit`, TextLimitExceeded where they come to more characters.
        HTML and EPUB count as they go: their elements' own texts repeat nested text, so that a
        small file could give more than memory holds (service/api/markup.py)."""
        if isinstance(self._package, Ebook):
            return self._package.texts(limit)
        if self._html is not None:
            return self._html.texts(limit)
        if self._package is not None:
            texts = self._package.texts()
        elif self.suffix == ".srt":
            texts = [cue.content for cue in self._cues]
        else:
            texts = [self._plain]
        characters = sum(len(text) for text in texts)
        if limit is not None and characters > limit:
            raise TextLimitExceeded(characters)
        return texts

    def render(self, translations: list[str]) -> bytes:
        if self._package is not None:
            return self._package.render(translations)
        if self._html is not None:
            return self._html.render(translations).encode("utf-8")
        if self.suffix == ".srt":
            cues = [
                srt.Subtitle(cue.index, cue.start, cue.end, text, cue.proprietary)
                for cue, text in zip(self._cues, translations, strict=True)
            ]
            composed: str = srt.compose(cues, reindex=False)
            return composed.encode("utf-8")
        return translations[0].encode("utf-8")


def document_format(name: str) -> str:
    return PurePath(name).suffix.lower()
