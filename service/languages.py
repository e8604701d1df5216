"""A model's languages and the directions it was trained on, as its manifest records them.

Torch-free: the runtime, the CLI and every HTTP route ask this object, never a constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from lingua import IsoCode639_1, Language


class UnknownLanguage(ValueError):
    def __init__(self, code: str, languages: Sequence[str]) -> None:
        super().__init__(f"{code!r} is not a language of this model; it has {', '.join(languages)}")
        self.code = code


class UnsupportedDirection(ValueError):
    """A pair of the model's languages that it was not trained to translate."""

    def __init__(self, source: str, target: str, directions: Sequence[tuple[str, str]]) -> None:
        offered = ", ".join(f"{s}→{t}" for s, t in directions)
        super().__init__(f"{source}→{target} is not a direction of this model; it translates {offered}")
        self.source, self.target = source, target


def lingua_language(code: str) -> Language | None:
    """lingua's language for an ISO 639-1 code (its subtags ignored), if lingua knows it."""
    try:
        return Language.from_iso_code_639_1(IsoCode639_1.from_str(code.split("-")[0]))
    except ValueError:
        return None


# Argos Translate's own codes, with the names its packages give them
ARGOS_NAMES = {"zt": "Chinese (traditional)", "pb": "Portuguese (Brazil)"}


@cache
def language_name(code: str) -> str:
    """English name of a language code ("de" -> "German"); the code itself when unknown."""
    if code in ARGOS_NAMES:
        return ARGOS_NAMES[code]
    language = lingua_language(code)
    return language.name.capitalize() if language else code


@dataclass(frozen=True)
class ModelLanguages:
    codes: tuple[str, ...]
    tag_ids: Mapping[str, int]  # language -> its decoder start token id
    directions: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        for source, target in self.directions:
            for lang in (source, target):
                if lang not in self.codes:
                    raise ValueError(f"direction {source}-{target} names {lang!r}, not one of {list(self.codes)}")
        missing = [lang for lang in {t for _, t in self.directions} if lang not in self.tag_ids]
        if missing:
            raise ValueError(f"no language tag id for {missing}")

    def has(self, code: str) -> bool:
        return code in self.codes

    def require(self, code: str) -> str:
        if code not in self.codes:
            raise UnknownLanguage(code, self.codes)
        return code

    def targets(self, source: str) -> list[str]:
        return [t for s, t in self.directions if s == source]

    def sources(self, target: str) -> list[str]:
        return [s for s, t in self.directions if t == target]

    @property
    def target_codes(self) -> list[str]:
        return [lang for lang in self.codes if self.sources(lang)]

    def check(self, source: str, target: str) -> None:
        """Raise UnknownLanguage or UnsupportedDirection unless the model translates source→target."""
        self.require(source)
        self.require(target)
        if (source, target) not in self.directions:
            raise UnsupportedDirection(source, target, self.directions)

    def parse_direction(self, text: str) -> tuple[str, str]:
        """`en-fr` (or `pt-BR-en`: codes may hold hyphens) as a pair of the model's languages."""
        parts = text.split("-")
        for cut in range(1, len(parts)):
            source, target = "-".join(parts[:cut]), "-".join(parts[cut:])
            if source in self.codes and target in self.codes:
                self.check(source, target)
                return source, target
        offered = ", ".join(f"{s}-{t}" for s, t in self.directions)
        raise ValueError(f"direction must be one of {offered}; got {text!r}")

    def default_target(self, source: str | None) -> str:
        """The target when none is asked for: the only one from `source`, else the first direction's."""
        if source is not None:
            targets = self.targets(source)
            if len(targets) == 1:
                return targets[0]
        return self.directions[0][1]
