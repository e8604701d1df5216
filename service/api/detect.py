"""Language detection restricted to the model's languages (lingua), in LibreTranslate's shape."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

_LINGUA = {"en": Language.ENGLISH, "fr": Language.FRENCH}
_CODES = {language: code for code, language in _LINGUA.items()}


@dataclass(frozen=True)
class Detection:
    language: str
    confidence: float  # 0..100, as LibreTranslate reports it

    def as_dict(self) -> dict[str, object]:
        return {"confidence": self.confidence, "language": self.language}


class Detector:
    def __init__(self, languages: tuple[str, ...] = ("en", "fr")) -> None:
        self.languages = languages

    @cached_property
    def _detector(self) -> LanguageDetector:
        return LanguageDetectorBuilder.from_languages(*(_LINGUA[lang] for lang in self.languages)).build()

    def warm_up(self) -> None:
        self.detect("warm up")

    def detect(self, text: str) -> list[Detection]:
        """Every supported language with its confidence, most likely first. Text without letters
        gives the first language with confidence 0."""
        values = self._detector.compute_language_confidence_values(text)
        out = [Detection(_CODES[v.language], round(100.0 * v.value, 2)) for v in values if v.language in _CODES]
        if not out or all(d.confidence == 0 for d in out):
            return [Detection(lang, 0.0) for lang in self.languages]
        return sorted(out, key=lambda d: (-d.confidence, self.languages.index(d.language)))

    def best(self, text: str) -> Detection:
        return self.detect(text)[0]
