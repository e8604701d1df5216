"""Text normalisation applied identically to training data and to service input, and the checks
the service makes of a text before it reaches the model."""

from __future__ import annotations

import re
import unicodedata

# Spaces French typography puts before ! ? : ; and inside guillemets, plus
# invisible characters that only confuse the tokenizer.
_SPACE_LIKE = dict.fromkeys(map(ord, "\u00a0\u202f\u2009\u2007\u2002\u2003\t"), " ")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u00ad\ufeff"), None)
_QUOTES = {ord("\u2019"): "'", ord("\u2018"): "'"}
_MULTI_SPACE = re.compile(r" {2,}")


def normalize(text: str) -> str:
    """NFC, one kind of space, straight apostrophes, no invisible characters, trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = text.translate(_SPACE_LIKE).translate(_INVISIBLE).translate(_QUOTES)
    return _MULTI_SPACE.sub(" ", text).strip()


_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, *range(0x80, 0xA0)], " ")
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """Text safe for every later stage: lone surrogates are dropped, control characters
    (other than tab and line breaks) become spaces. Whitespace layout is kept."""
    # Runs on the event loop for every text of a request: the search is in C (a character loop
    # in Python took 3 ms for 100,000 characters).
    if not text.isascii() and _SURROGATE.search(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "ignore")
    return text.translate(_CONTROLS)


def has_letters(text: str) -> bool:
    """Whether any character is a letter, in any script. A segment without one (numbers, emoji,
    punctuation, symbols) has nothing to translate: it comes back unchanged, never through the model."""
    return any(ch.isalpha() for ch in text)
