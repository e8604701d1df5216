"""The whole-word pieces fill-mask may propose, read off the training text."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from service.manifest import FILL_VOCAB_FILE

WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
MIN_COUNT = 3


def whole_word_ids(sp: spm.SentencePieceProcessor, sentences: Iterable[str], min_count: int = MIN_COUNT) -> list[int]:
    """Ids of pieces `▁w` where w occurs at least `min_count` times as a word and is one piece.

    A fragment such as `▁pla` never qualifies: "pla" is not a word of the text.
    """
    counts = Counter(w for s in sentences for w in WORD.findall(s))
    ids = set()
    for word, count in counts.items():
        if count < min_count:
            continue
        pieces = sp.encode(word)
        if len(pieces) == 1 and sp.id_to_piece(pieces[0]) == "▁" + word:
            ids.add(pieces[0])
    return sorted(ids)


def write_fill_vocab(out: Path, ids: list[int]) -> None:
    (out / FILL_VOCAB_FILE).write_text(json.dumps({"min_count": MIN_COUNT, "ids": ids}) + "\n")
