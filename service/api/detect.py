"""Language detection restricted to the model's languages (lingua), in LibreTranslate's shape."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lingua import LanguageDetector, LanguageDetectorBuilder

from service.languages import lingua_language

CANDIDATES = 3


@dataclass(frozen=True)
class Detection:
    language: str
    confidence: float  # 0..100, as LibreTranslate reports it

    def as_dict(self) -> dict[str, object]:
        return {"confidence": self.confidence, "language": self.language}

    def source_for(self, target: str) -> str:
        """The language to translate from; `target` where nothing was found (no letters): such
        text has nothing to translate and comes back as it is."""
        return self.language if self.confidence else target


class Detector:
    """lingua over the model's languages that lingua knows. Text it cannot place (no letters, or
    fewer than two languages to choose from) gets LibreTranslate's answer: one candidate, English
    (else the model's first language) with confidence 0."""

    def __init__(self, languages: tuple[str, ...]) -> None:
        self.languages = languages
        self.fallback = "en" if "en" in languages else languages[0]
        known = {code: lingua_language(code) for code in languages}
        self._codes = {language: code for code, language in known.items() if language is not None}

    @cached_property
    def _detector(self) -> LanguageDetector | None:
        if len(self._codes) < 2:
            return None
        return LanguageDetectorBuilder.from_languages(*self._codes).build()

    def warm_up(self) -> None:
        self.detect("warm up")

    def _found(self, text: str) -> list[Detection]:
        detector = self._detector
        values = detector.compute_language_confidence_values(text) if detector else []
        out = [
            Detection(self._codes[v.language], round(100.0 * v.value, 2))
            for v in values
            if v.language in self._codes and v.value > 0
        ]
        return sorted(out, key=lambda d: (-d.confidence, self.languages.index(d.language)))

    def detect(self, text: str) -> list[Detection]:
        """Every supported language with its confidence, most likely first (the fallback alone,
        with confidence 0, where nothing is found)."""
        return self._found(text) or [Detection(self.fallback, 0.0)]

    def candidates(self, text: str) -> list[Detection]:
        """At most three candidates, most likely first, as LibreTranslate's detector answers."""
        return self.detect(text)[:CANDIDATES]

    def detect_many(self, texts: list[str]) -> list[Detection]:
        """One list for several texts, as LibreTranslate's detect_languages merges them: a language
        found in several texts gets its mean confidence and their summed length; the list is
        ordered by confidence weighted by text length."""
        if len(texts) == 1:
            return self.candidates(texts[0])
        found: dict[str, list[tuple[float, int]]] = {}
        for text in texts:
            for d in self._found(text)[:CANDIDATES]:  # a text nothing was found in counts for nothing
                found.setdefault(d.language, []).append((d.confidence, len(text)))
        if not found:
            return [Detection(self.fallback, 0.0)]
        total = sum(len(t) for t in texts) or 1
        merged = [
            (Detection(lang, round(sum(c for c, _ in hits) / len(hits), 2)), sum(n for _, n in hits))
            for lang, hits in found.items()
        ]
        merged.sort(key=lambda m: (-m[0].confidence * m[1] / total, self.languages.index(m[0].language)))
        return [d for d, _ in merged]

    def best(self, text: str) -> Detection:
        return self.detect(text)[0]
