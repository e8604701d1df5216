"""Copy augmentation: teach the model to carry through what must not be translated.

Many training pairs share a token verbatim on both sides: a name ("Tom", "Boston") or a
number. Replacing that token, on both sides, with a random number, URL, e-mail address,
code or oddly cased name gives pairs in which the only right move is to copy, so the
model learns to copy numbers, URLs and casing it has never seen.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from model.corpus import Pair

WORD = re.compile(r"\b\w+\b")


def _syllables(rng: np.random.Generator, count: int) -> str:
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    return "".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(count))


def _number(rng: np.random.Generator) -> str:
    value = str(int(rng.integers(0, 10 ** int(rng.integers(1, 7)))))
    shape = rng.integers(4)
    if shape == 1:
        return f"{value}.{int(rng.integers(0, 100)):02d}"
    if shape == 2:
        return f"{int(rng.integers(0, 24))}:{int(rng.integers(0, 60)):02d}"
    return value


def _url(rng: np.random.Generator) -> str:
    host = _syllables(rng, int(rng.integers(2, 4)))
    path = "/".join(_syllables(rng, 2) for _ in range(int(rng.integers(0, 3))))
    query = f"?id={int(rng.integers(1, 9999))}" if rng.random() < 0.3 else ""
    scheme = "https://" if rng.random() < 0.7 else "www."
    return f"{scheme}{host}.{rng.choice(['com', 'org', 'fr', 'io'])}/{path}{query}".rstrip("/")


def _email(rng: np.random.Generator) -> str:
    return f"{_syllables(rng, 2)}.{_syllables(rng, 2)}@{_syllables(rng, 2)}.{rng.choice(['com', 'fr'])}"


def _code(rng: np.random.Generator) -> str:
    letters = "".join(rng.choice(list(string.ascii_uppercase), size=int(rng.integers(2, 4))))
    return f"{letters}-{int(rng.integers(10, 99999))}"


def _name(rng: np.random.Generator) -> str:
    word = _syllables(rng, int(rng.integers(1, 4)))
    shape = rng.integers(3)
    if shape == 0:
        return word.upper()
    if shape == 1:
        return word[0] + word[1:].capitalize()  # iPhone-like inner capital
    return word.capitalize()


SPAN_MAKERS: tuple[Callable[[np.random.Generator], str], ...] = (_number, _url, _email, _code, _name)


def shared_tokens(pair: Pair) -> list[str]:
    """Tokens that occur exactly once on each side: numbers, and capitalised words not first in the sentence."""
    en, fr = WORD.findall(pair.src), WORD.findall(pair.tgt)
    return [
        t for t in dict.fromkeys(en)
        if en.count(t) == 1 and fr.count(t) == 1 and (t.isdigit() or (t[0].isupper() and en.index(t) > 0))
    ]  # fmt: skip


def copy_pairs(pairs: Sequence[Pair], rate: float, rng: np.random.Generator) -> list[Pair]:
    """Synthetic pairs: for each pair with a shared token, `rate` expected copies with that token replaced."""
    out = []
    for pair in pairs:
        tokens = shared_tokens(pair)
        if not tokens:
            continue
        copies = int(rate) + int(rng.random() < rate - int(rate))
        for _ in range(copies):
            token = tokens[int(rng.integers(len(tokens)))]
            span = SPAN_MAKERS[int(rng.integers(len(SPAN_MAKERS)))](rng)
            pattern = re.compile(rf"\b{re.escape(token)}\b")

            def put(_: re.Match[str], span: str = span) -> str:  # inserted literally, never read as a backreference
                return span

            out.append(Pair(pattern.sub(put, pair.src), pattern.sub(put, pair.tgt)))
    return out
