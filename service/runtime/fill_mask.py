"""Masked-word fill on the encoder and MLM head, in the Hugging Face fill-mask pipeline's shape.

A `<mask>` stands for one word. Candidates are whole-word pieces only (listed at
export time from the training text), never a word-start fragment such as `▁pla`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service import conventions as cv
from service.runtime.sessions import OnnxModel
from service.textnorm import normalize

MASK_PATTERN = re.compile(r"<mask>|\[MASK\]")
MAX_FILL_TOKENS = 512  # the encoder has more positions, but captions are short; longer input is refused


class FillMaskError(ValueError):
    """The request cannot be answered as asked (no mask, unknown target); `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Candidate:
    score: float
    token: int
    token_str: str
    sequence: str

    def as_dict(self) -> dict[str, object]:
        return {"score": self.score, "token": self.token, "token_str": self.token_str, "sequence": self.sequence}


class FillMask:
    @classmethod
    def from_model(cls, model: OnnxModel) -> FillMask:
        data = json.loads((model.model_dir / model.manifest.files["fill_vocab"]).read_text())
        return cls(model, data["ids"])

    def __init__(self, model: OnnxModel, word_ids: Sequence[int]) -> None:
        self.model, self.tokenizer = model, model.tokenizer
        self.word_ids = np.asarray(sorted(word_ids), dtype=np.int64)
        if not len(self.word_ids):
            raise ValueError("no whole-word candidates: the model directory lacks its fill vocabulary")

    def _encode(self, chunks: list[str]) -> tuple[list[int], list[int]]:
        """Ids for text chunks joined by masks, and the mask positions. The mask absorbs the word's space."""
        ids: list[int] = []
        positions: list[int] = []
        for i, chunk in enumerate(chunks):
            if i:
                positions.append(len(ids))
                ids.append(cv.MASK_ID)
            ids += self.tokenizer.encode(chunk.strip()) if chunk.strip() else []
        return [*ids, cv.EOS_ID], positions

    def target_ids(self, targets: Sequence[str]) -> np.ndarray:
        """Ids of the given words; each must be a single whole-word piece of the vocabulary."""
        out = []
        for word in targets:
            pieces = self.tokenizer.encode(word.strip())
            if len(pieces) != 1 or pieces[0] not in set(self.word_ids.tolist()):
                raise FillMaskError("targets", f"target {word!r} is not a single word of the model's vocabulary")
            out.append(pieces[0])
        return np.asarray(out, dtype=np.int64)

    def fill(self, text: str, top_k: int = 5, targets: Sequence[str] | None = None) -> list[list[Candidate]]:
        """One list of candidates per mask, best first; probabilities are softmax over the whole vocabulary."""
        text = normalize(text)
        chunks = MASK_PATTERN.split(text)
        if len(chunks) < 2:
            raise FillMaskError("text", "text must contain at least one <mask> (or [MASK])")
        ids, positions = self._encode(chunks)
        if len(ids) > MAX_FILL_TOKENS:
            raise FillMaskError("text", f"text is {len(ids)} tokens long; fill-mask takes at most {MAX_FILL_TOKENS}")
        arr = np.asarray([ids], dtype=np.int64)
        enc = self.model.encode(arr, np.ones_like(arr))
        logits = self.model.mlm_logits(enc.hidden[:, positions])[0]  # [masks, V]
        logits = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        allowed = self.target_ids(targets) if targets else self.word_ids
        spans = [m.span() for m in MASK_PATTERN.finditer(text)]
        results = []
        for m, (start, end) in enumerate(spans):
            p = probs[m, allowed]
            order = np.lexsort((allowed, -p))[:top_k]  # by probability, ties to the lower id
            row = []
            for j in order:
                word = self.tokenizer.decode([int(allowed[j])])
                row.append(Candidate(float(p[j]), int(allowed[j]), word, text[:start] + word + text[end:]))
            results.append(row)
        return results
