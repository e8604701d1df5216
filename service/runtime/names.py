"""Personal names, which a small model trained on captions mangles ("John Smith" -> "John Smithe").

Two rules, both narrow on purpose:
- a title and the capitalised words after it ("Dr. Ehud Ur", "Mrs. Jones") travel as a
  placeholder, verbatim (service/runtime/protect.py);
- a segment that is only two to four capitalised words ("John Smith", "Marie Curie") comes
  back as it was when the model's translation is a near copy of it: the model tried to copy a
  name and slipped. A real translation of such a segment ("Good Morning" -> "Bonjour", "Red
  Cross" -> "Croix-Rouge") differs far more and stands.
"""

from __future__ import annotations

import difflib
import re

_WORD = r"(?:[A-Z]\.|[A-Z][\w'’-]*)"  # an initial (with its stop) or a capitalised word (without)
TITLED_NAME = rf"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sr|Jr|St|Mme|Mlle|Pr)\.\s+{_WORD}(?:\s+{_WORD})*"
_NAME_WORD = re.compile(r"[A-Z][a-z'’-]*[a-z]|[A-Z]\.")  # a capitalised word or an initial
NEAR_COPY = 0.8  # difflib's similarity ratio


def name_like(text: str) -> bool:
    words = text.split()
    return 2 <= len(words) <= 4 and all(_NAME_WORD.fullmatch(w) for w in words)


def keep_name(source: str, translation: str) -> str:
    """The source where it is a name the translation nearly copied, else the translation."""
    if translation == source or not name_like(source):
        return translation
    if difflib.SequenceMatcher(None, source, translation).ratio() >= NEAR_COPY:
        return source
    return translation
