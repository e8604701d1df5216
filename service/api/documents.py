"""Documents for /translate_file: each format hands out its texts and is rebuilt with their translations.

One markup engine: HTML goes through service/api/markup.py as the `format=html` route does; a
subtitle file keeps its numbering and timings, only each cue's text is translated. A file that
does not parse as its extension says is a DocumentError (a 400 naming the problem), before any
text reaches the model: never a partly translated file.
"""

from __future__ import annotations

from pathlib import PurePath

import srt

from service.api.markup import HtmlDocument

# The formats /translate_file takes, with the media type their translations are served as.
MEDIA_TYPES = {".txt": "text/plain", ".html": "text/html", ".htm": "text/html", ".srt": "application/x-subrip"}
FORMATS = tuple(MEDIA_TYPES)


class DocumentError(ValueError):
    """The file is not what its extension says, or cannot be read."""


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
        self._cues: list[srt.Subtitle] = []
        self._plain = ""
        if suffix == ".txt":
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

    def texts(self) -> list[str]:
        if self._html is not None:
            return self._html.texts()
        if self.suffix == ".srt":
            return [cue.content for cue in self._cues]
        return [self._plain]

    def render(self, translations: list[str]) -> bytes:
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
