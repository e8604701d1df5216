"""Spans that must come through verbatim (URLs, e-mail addresses, Weblate's `[X7X]` placeholders)
travel as placeholders, and so do a request's glossary terms, which come back as their targets.

A URL is dozens of sentence pieces, and one wrong piece breaks it. Each such span is replaced
by a short code (`QK-2834`, ...), the kind of token the model learned to copy (copy
augmentation, model/augment.py), and put back after decoding. A placeholder the model dropped
is appended, so the span is never lost. Numbers are left to the model: their value decides
agreement ("1 dog", "2 dogs") and it learned to copy them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.runtime.names import TITLED_NAME

if TYPE_CHECKING:
    from service.runtime.glossary import Glossary

PROTECTED = re.compile(
    r"(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]"  # URLs, without trailing punctuation
    # e-mail addresses, begun only where a run of their characters begins: tried from every
    # character of a long run, the search took the square of its length (95 ms for 5,000)
    r"|(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|\[X\d+X\]"  # Weblate's placeholders for format strings and markup it keeps out of machine translation
    rf"|{TITLED_NAME}"  # a title and a name: "Dr. Ehud Ur" (service/runtime/names.py)
)
# Codes the default model copied verbatim in every context tried (ZX-101 it stuttered on: "ZX-10101");
# the round trip is tested in tests/test_golden.py.
_CODES = ("QK-2834", "KX-3946", "ZQ-5827", "XJ-6194", "VW-7352", "JQ-4816", "WZ-9263", "QX-1579", "KZ-8437", "XQ-3658")


def placeholder(i: int) -> str:
    return _CODES[i] if i < len(_CODES) else f"QK-{2834 + i}"


@dataclass(frozen=True)
class Protected:
    text: str  # with placeholders
    spans: list[str]  # the originals, in placeholder order


def with_terms(terms: str) -> re.Pattern[str]:
    """The verbatim spans, then a glossary's terms (group `term`), in one pattern."""
    return re.compile(f"{PROTECTED.pattern}|(?P<term>{terms})")


def protect(text: str, glossary: Glossary | None = None) -> Protected:
    """Placeholders for the verbatim spans and, with a glossary, for its terms (each standing for its target)."""
    spans: list[str] = []

    def swap(match: re.Match[str]) -> str:
        term = match.group("term") if glossary is not None else None
        spans.append(glossary.target(term) if glossary is not None and term is not None else match.group(0))
        return placeholder(len(spans) - 1)

    pattern = glossary.regex if glossary is not None and glossary.regex is not None else PROTECTED
    return Protected(pattern.sub(swap, text), spans)


# Any placeholder as the model may write it back, its hyphen spaced ("QK - 2834").
_PLACED = re.compile(rf"({'|'.join(sorted({code.split('-')[0] for code in _CODES}))})\s*-\s*(\d+)(?!\d)")


def restore(translation: str, spans: list[str]) -> str:
    """Put each span back where its placeholder first came out, in one pass over the translation
    (a span's own text is never read again); append any the model dropped."""
    index = {tuple(placeholder(i).split("-")): i for i in range(len(spans))}
    placed: set[int] = set()

    def put_back(match: re.Match[str]) -> str:
        i = index.get((match.group(1), match.group(2)))
        if i is None or i in placed:
            return match.group(0)
        placed.add(i)
        return spans[i]

    translation = _PLACED.sub(put_back, translation)
    missing = [span for i, span in enumerate(spans) if i not in placed]
    if missing:
        translation = f"{translation.rstrip()} {' '.join(missing)}".strip()
    return translation
