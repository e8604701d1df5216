"""Glossaries: source terms whose translation is fixed, carried through decoding as placeholders.

A term matches whole words only. Matching is case-aware: a term written in lower case is a
common word and matches it in any case ("dog" matches "Dog" at the start of a sentence, and
its target then starts with a capital too); a term with a capital (a name, an acronym, a
product) matches only as written. Where terms overlap, the longest wins. The matched term is
replaced by a placeholder the model copies (service/runtime/protect.py), and the target term
comes back exactly as given.

A sentence is first translated as it is: where the translation already holds every target
term, it stands (the placeholder would cost the model its grammar around the term: on 200
test2016 sentences, 5 BLEU where the terms were the model's own words). Only a sentence
missing a term is translated again with placeholders (`missing`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.runtime.protect import with_terms

MAX_ENTRIES = 1000  # per request
MAX_FILE_ENTRIES = 100_000  # per operator glossary (MTSERVE_GLOSSARY_DIR)
MAX_TERM_CHARS = 200


class GlossaryError(ValueError):
    """An entry or a glossary that breaks a rule or a limit; the message names which."""


@dataclass(frozen=True)
class Glossary:
    entries: tuple[tuple[str, str], ...]
    name: str = ""
    _exact: dict[str, str] = field(init=False, repr=False, compare=False)
    _folded: dict[str, str] = field(init=False, repr=False, compare=False)
    # the terms after the spans kept verbatim (service/runtime/protect.py), compiled once; None: no terms
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {s: t for s, t in self.entries if s != s.lower()}
        folded = {s.lower(): t for s, t in self.entries if s == s.lower()}
        terms = sorted({*exact, *folded}, key=lambda term: (-len(term), term))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_folded", folded)
        pattern = rf"(?<!\w)(?:{_alternation(terms, exact)})(?!\w)"
        object.__setattr__(self, "regex", with_terms(pattern) if terms else None)

    def missing(self, source: str, translation: str) -> bool:
        """Whether a term of `source` (outside the spans kept verbatim) has its target missing
        from `translation` (whole words; a lower-case term's target in any case)."""
        if self.regex is None:
            return False
        for match in self.regex.finditer(source):
            term = match.group("term")
            if term is None:
                continue
            target = self.target(term)
            flags = 0 if term in self._exact else re.IGNORECASE
            if not re.search(rf"(?<!\w){re.escape(target)}(?!\w)", translation, flags):
                return True
        return False

    def target(self, matched: str) -> str:
        """The target of a matched source term, capitalised where a lower-case term met a capital."""
        if matched in self._exact:
            return self._exact[matched]
        target = self._folded[matched.lower()]
        if matched[:1].isupper() and target[:1].islower():
            return target[:1].upper() + target[1:]
        return target


# Terms in one plain alternation at most (smaller groups compile slower, larger ones search slower:
# docs/BENCHMARKS.md); more are split by their next character (_alternation), to a prefix of at most
# _LONGEST_PREFIX characters (each a nested group, and Python parses groups recursively).
_PLAIN_ALTERNATION = 64
_LONGEST_PREFIX = 8


def _alternation(terms: list[str], exact: dict[str, str], prefix: str = "") -> str:
    """A pattern that matches the first of `terms` (longest first, all starting with `prefix` in any
    case) that matches, as their plain alternation would. Python's `re` tries an alternation's
    branches one by one at every word start: 88,508 terms took 245 ms for 5,000 characters. Here the
    terms are split by their first character, then each large group by its second, and so on, each
    group behind a lookahead for its prefix in any case, so a word start tries a few dozen
    lookaheads at each level and then the terms of its own small group, in the same order (1.2 ms). (Only
    where Python folds cases that `str.lower` keeps apart, as the long s and s, can two groups'
    lookaheads pass at one place.)"""
    if len(terms) <= _PLAIN_ALTERNATION or len(prefix) == _LONGEST_PREFIX:
        return _plain(terms, exact)
    groups: dict[str, list[str]] = {}
    ending: list[str] = []  # terms no longer than the prefix: shorter than every grouped one, so last
    for term in terms:
        if len(term) > len(prefix):
            groups.setdefault(_folded_key(term[: len(prefix) + 1]), []).append(term)
        else:
            ending.append(term)
    branches = [f"(?=(?i:{re.escape(key)}))(?:{_alternation(group, exact, key)})" for key, group in groups.items()]
    return "|".join([*branches, _plain(ending, exact)] if ending else branches)


def _plain(terms: list[str], exact: dict[str, str]) -> str:
    return "|".join(re.escape(t) if t in exact else f"(?i:{re.escape(t)})" for t in terms)


def _folded_key(characters: str) -> str:
    """`characters` in lower case, unless lowering changes their number (İ): then as they are."""
    lowered = characters.lower()
    return lowered if len(lowered) == len(characters) else characters


def verbatim_glossary(glossary: Glossary) -> Glossary:
    """Each target term kept as it is: for the later legs of a pivot, whose input already holds them."""
    return Glossary(tuple(dict.fromkeys((target, target) for _, target in glossary.entries)), glossary.name)


def _check_term(term: object, where: str) -> str:
    if not isinstance(term, str) or not term.strip():
        raise GlossaryError(f"{where} must be a non-empty string")
    if len(term) > MAX_TERM_CHARS:
        raise GlossaryError(f"{where} has {len(term)} characters, over the glossary term limit ({MAX_TERM_CHARS})")
    if "\n" in term or "\t" in term:
        raise GlossaryError(f"{where} must be one line without tabs")
    return term.strip()


def build_glossary(pairs: Iterable[tuple[object, object]], name: str = "", limit: int = MAX_ENTRIES) -> Glossary:
    """A glossary from (source, target) pairs, each checked; the field names in errors are `glossary[i]`."""
    entries: list[tuple[str, str]] = []
    for i, (source, target) in enumerate(pairs):
        if i >= limit:
            raise GlossaryError(f"glossary has more than {limit} entries, over the glossary entry limit ({limit})")
        where = f"{name or 'glossary'}[{i}]"
        entries.append((_check_term(source, f"{where}.source"), _check_term(target, f"{where}.target")))
    return Glossary(tuple(entries), name)


def load_glossary_dir(directory: Path) -> dict[str, Glossary]:
    """Every `NAME.tsv` in `directory`: one `source<TAB>target` per line; blank lines and `#` comments skipped."""
    if not directory.is_dir():
        raise GlossaryError(f"MTSERVE_GLOSSARY_DIR {directory} is not a directory")
    glossaries: dict[str, Glossary] = {}
    for path in sorted(directory.glob("*.tsv")):
        pairs: list[tuple[object, object]] = []
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            columns = line.split("\t")
            if len(columns) != 2:
                raise GlossaryError(
                    f"{path.name} line {number}: expected 'source<TAB>target', got {len(columns)} columns"
                )
            pairs.append((columns[0], columns[1]))
        glossaries[path.stem] = build_glossary(pairs, path.stem, MAX_FILE_ENTRIES)
    return glossaries
