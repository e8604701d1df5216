"""Each sentence's output shortlist, and a batch's output layer over their union.

A model directory with an output layer file (export/shortlist.py) has a decoder step whose
output projection reads its weights from inputs. A batch binds the columns of the union of
its sentences' shortlists, and a bias per row that is 0 on its own sentence's candidates
(plus the projection's own bias) and -inf elsewhere: the log-softmax of a row spans its
sentence's shortlist whatever else is in the batch, so a sentence decodes the same alone or in
any batch. The union is sorted, so that the step's top-k still prefers the lower id on ties.

A sentence's shortlist, `size` tokens: the special tokens up to EOS and the unknown token, the
target language's FREQUENT_FIRST most frequent tokens, the sentence's own tokens, its tokens'
translations rank by rank, then more of the frequent tokens. A target language without a
lexical table, and every sentence with MTSERVE_SHORTLIST=off, spans the whole vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np

from service.manifest import Manifest, ModelFileError, SpecialIds
from service.runtime import native

OUTPUT_LAYER_FILE = "output_layer.npz"
OUTPUT_WEIGHT = "output_weight"
OUTPUT_SCALE = "output_scale"
OUTPUT_BIAS = "output_bias"
OUTPUT_VOCAB = "output_vocab"
LEXICAL_PREFIX = "lexical."
FREQUENT_PREFIX = "frequent."
# The target language's most frequent tokens (punctuation, articles, common verbs) come first in
# every shortlist, ahead of the translations.
FREQUENT_FIRST = 100


def shortlist_enabled(setting: str | None = None) -> bool:
    """MTSERVE_SHORTLIST: "off" decodes over the whole vocabulary (exactly as without a shortlist,
    a little slower); anything else uses a model's shortlist where it has one."""
    value = os.environ.get("MTSERVE_SHORTLIST", "on") if setting is None else setting
    return value.strip().lower() != "off"


def always_candidates(ids: SpecialIds) -> np.ndarray:
    """The tokens in every shortlist: all ids up to EOS (so that EOS keeps its own id as its
    position, where the step reads its log-prob) and the unknown token."""
    return np.unique(np.array([*range(ids.eos + 1), *([ids.unk] if ids.unk is not None else [])]))


def sentence_shortlist(
    source: Sequence[int], translations: np.ndarray, frequent: np.ndarray, always: np.ndarray, size: int
) -> np.ndarray:
    """`size` candidate tokens, ascending, for a sentence of `source` ids: `always`, the FREQUENT_FIRST
    most `frequent` targets, the source's own tokens, their `translations` ([V, ranks], best first)
    rank by rank, then the most frequent of the rest."""
    vocab_size = len(frequent)
    own = np.unique(np.asarray(source, np.int64))
    own = own[(own >= 0) & (own < vocab_size)]
    chosen = np.zeros(vocab_size, bool)
    for tokens in (always, frequent[:FREQUENT_FIRST], own):
        chosen[tokens] = True
    need = size - np.count_nonzero(chosen)
    if need > 0:  # the first `need` translations not chosen yet, in rank order
        ranked = translations[own].T.ravel().astype(np.intp)
        fresh = ranked[~chosen[ranked]]
        tokens, first = np.unique(fresh, return_index=True)
        if len(tokens) > need:
            tokens = tokens[first <= np.partition(first, need - 1)[need - 1]]
        chosen[tokens] = True
        need -= len(tokens)
    if need > 0:  # `size - need` are chosen: the first `size` frequent ones hold `need` others
        head = frequent[:size].astype(np.intp)
        chosen[head[~chosen[head]][:need]] = True
    return np.flatnonzero(chosen)


@dataclass(frozen=True)
class BatchVocab:
    """The output layer's inputs for a batch of sentences: the union, its columns, each sentence's mask."""

    vocab: np.ndarray  # [U] int64, ascending, padded at the end to whole top-k blocks
    weight: np.ndarray  # the projection's columns for `vocab`, laid out as the step reads them
    scale: np.ndarray | None  # int8: [U] their scales
    sentence_bias: np.ndarray  # [n, U] float32: 0 (plus the projection's bias) where allowed, else -inf
    # row_bias's arrays, per beam width: a binding holds them, and `refill` writes them again
    by_beams: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    # The whole vocabulary (OutputLayer.full): its arrays are the output layer's, shared, never refilled
    shared: bool = field(default=False, compare=False)
    # int8 columns the host may multiply by (projection.py): [U] int32 each column's sum, else None
    col_sums: np.ndarray | None = field(default=None, compare=False, repr=False)
    # projection.py's arrays made from these columns, once a batch, and from the sentences' bias (which
    # `kept` leaves behind); `refill` empties both
    host: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    host_rows: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def row_bias(self, beams: int) -> np.ndarray:
        """[n · beams, U]: each sentence's bias for each of its rows."""
        if beams == 1:
            return self.sentence_bias
        rows = self.by_beams.get(beams)
        if rows is None:
            rows = self.by_beams[beams] = np.repeat(self.sentence_bias, beams, axis=0)
        return rows

    def kept(self, sentences: np.ndarray) -> BatchVocab:
        """The same union for the sentences kept (a compaction): their rows decode as before."""
        return replace(self, sentence_bias=self.sentence_bias[sentences], by_beams={}, host_rows={})

    def owned(self) -> BatchVocab:
        """A copy in arrays of its own, which `refill` may write (a batch's weight may be the output
        layer's whole matrix, shared)."""
        scale = None if self.scale is None else self.scale.copy()
        sums = None if self.col_sums is None else self.col_sums.copy()
        return BatchVocab(self.vocab.copy(), self.weight.copy(), scale, self.sentence_bias.copy(), col_sums=sums)

    def refill(self, other: BatchVocab) -> bool:
        """Takes `other`'s values into its own arrays (and row_bias's), where their shapes agree and
        `other` is not the whole vocabulary (`shared`); whether they did. An owned copy only."""
        if other.shared:
            return False
        pairs = [(self.vocab, other.vocab), (self.weight, other.weight), (self.sentence_bias, other.sentence_bias)]
        if (self.scale is None) != (other.scale is None):
            return False
        if self.scale is not None and other.scale is not None:
            pairs.append((self.scale, other.scale))
        if (self.col_sums is None) != (other.col_sums is None):
            return False
        if self.col_sums is not None and other.col_sums is not None:
            pairs.append((self.col_sums, other.col_sums))
        if any(mine.shape != theirs.shape or mine.dtype != theirs.dtype for mine, theirs in pairs):
            return False
        for mine, theirs in pairs:
            np.copyto(mine, theirs)
        self.host.clear()
        self.host_rows.clear()
        n, width = self.sentence_bias.shape
        for beams, rows in self.by_beams.items():
            rows.reshape(n, beams, width)[:] = self.sentence_bias[:, None, :]
        return True


class OutputLayer:
    """A model's output layer file: the projection the decoder step reads through inputs, and the
    lexical tables of its target languages."""

    def __init__(self, path: Path, manifest: Manifest, enabled: bool = True) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise ModelFileError(path, f"not a readable output layer file ({exc})") from exc
        try:
            self.weight: np.ndarray = arrays["weight"]
            self.vocab_axis = int(arrays["vocab_axis"])
            self.size = int(arrays["size"])
            self.block = int(arrays["block"])
            self.k_blocks = int(arrays["k_blocks"])
        except KeyError as exc:
            raise ModelFileError(path, f"no {exc.args[0]!r} array in it") from exc
        self.vocab_size = manifest.vocab_size
        if self.weight.ndim != 2 or self.weight.shape[self.vocab_axis] != self.vocab_size:
            raise ModelFileError(path, f"its weight {self.weight.shape} does not span the vocabulary")
        self.scale = arrays.get("scale")
        self.bias = arrays.get("bias")
        for name, value in (("scale", self.scale), ("bias", self.bias)):
            if value is not None and value.shape != (self.vocab_size,):
                raise ModelFileError(path, f"its {name} {value.shape} does not span the vocabulary")
        self.enabled = enabled
        # A shortlist gathers some thousand of the vocabulary's columns for each batch. Kept as
        # rows ([V, D]), a batch reads only the rows it takes; in the step's layout ([D, V]) every
        # column gather reads the whole matrix. Only a model decoding over the whole vocabulary
        # (MTSERVE_SHORTLIST=off) keeps the step's layout.
        self.rows: np.ndarray | None = None
        if enabled and self.vocab_axis == 1:
            self.rows = np.ascontiguousarray(self.weight.T)
            self.weight = self.rows.T
        self._all_columns: np.ndarray | None = None
        self.translations = {k[len(LEXICAL_PREFIX):]: v for k, v in arrays.items()
                             if k.startswith(LEXICAL_PREFIX)}  # fmt: skip
        self.frequent = {k[len(FREQUENT_PREFIX):]: v for k, v in arrays.items()
                         if k.startswith(FREQUENT_PREFIX)}  # fmt: skip
        for lang, table in self.translations.items():
            frequent = self.frequent.get(lang)
            if (
                frequent is None
                or table.ndim != 2
                or len(table) != self.vocab_size
                or frequent.shape != (self.vocab_size,)
            ):
                raise ModelFileError(path, f"its lexical table into {lang!r} does not span the vocabulary")
            if table.min() < 0 or table.max() >= self.vocab_size:
                raise ModelFileError(path, f"its lexical table into {lang!r} names tokens outside the vocabulary")
        self.always = always_candidates(manifest.special_ids)
        # Each token's int8 column summed, where the host may multiply by them exactly: int8 weights
        # within 7 bits, which AVX2's byte products cannot saturate (_projection.c).
        self.token_sums: np.ndarray | None = None
        seven_bits = self.weight.dtype == np.int8 and self.weight.min() >= -64 and self.weight.max() <= 64
        if seven_bits and self.scale is not None:
            self.token_sums = self.weight.sum(axis=1 - self.vocab_axis, dtype=np.int32)  # no int32 copy
        self._full: BatchVocab | None = None
        self._last_full: BatchVocab | None = None

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest) -> OutputLayer | None:
        name = manifest.files.get("output_layer")
        return None if name is None else cls(model_dir / name, manifest, shortlist_enabled())

    def candidates(self, source: Sequence[int], language: str) -> np.ndarray | None:
        """A sentence's shortlist into `language`, ascending; None: the whole vocabulary."""
        table = self.translations.get(language)
        if table is None or not self.enabled:
            return None
        return sentence_shortlist(source, table, self.frequent[language], self.always, self.size)

    def _padded(self, vocab: np.ndarray) -> np.ndarray:
        blocks = max(-(-len(vocab) // self.block), self.k_blocks)
        return np.concatenate((vocab, np.full(blocks * self.block - len(vocab), vocab[-1], np.int64)))

    def _columns(self, vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if len(vocab) == self.vocab_size and vocab[-1] == self.vocab_size - 1:
            # the whole vocabulary in order (a target language without a lexical table): the
            # step's layout, made once and kept
            if self.rows is None:
                return self.weight, self.scale
            if self._all_columns is None:
                self._all_columns = take_columns(self.rows, vocab)
            return self._all_columns, self.scale
        scale = None if self.scale is None else self.scale[vocab]
        if self.rows is not None:
            return take_columns(self.rows, vocab), scale
        return np.ascontiguousarray(np.take(self.weight, vocab, axis=self.vocab_axis)), scale

    def batch(self, sources: Sequence[Sequence[int]], languages: Sequence[str]) -> BatchVocab:
        """The output layer's inputs for sentences `sources` into `languages`: `full`'s where none has a
        shortlist."""
        chosen = [self.candidates(source, lang) for source, lang in zip(sources, languages, strict=True)]
        if all(c is None for c in chosen):
            return self.full(len(chosen))
        return self._inputs(chosen)

    def _inputs(self, chosen: Sequence[np.ndarray | None]) -> BatchVocab:
        """The inputs for sentences of these candidates each (None: the whole vocabulary)."""
        if any(c is None for c in chosen):
            union = np.arange(self.vocab_size)
        elif len(chosen) == 1:
            union = cast(np.ndarray, chosen[0])
        else:
            union = np.unique(np.concatenate([c for c in chosen if c is not None]))
        vocab = self._padded(union)
        bias = np.full((len(chosen), len(vocab)), -np.inf, np.float32)
        for row, tokens in enumerate(chosen):
            positions = slice(0, len(union)) if tokens is None else np.searchsorted(union, tokens)
            bias[row, positions] = 0.0 if self.bias is None else self.bias[union[positions]]
        weight, scale = self._columns(vocab)
        sums = None if self.token_sums is None else self.token_sums[vocab]
        return BatchVocab(vocab, weight, scale, bias, col_sums=sums)

    def full(self, sentences: int) -> BatchVocab:
        """The whole vocabulary for `sentences` sentences: log-probs over every token, as without a shortlist."""
        if self._full is None:
            self._full = replace(self._inputs([None]), shared=True)
        last = self._last_full  # one object per batch size, so that a step's binding is kept
        if last is None or len(last.sentence_bias) != sentences:
            last = self._last_full = self._full.kept(np.zeros(sentences, np.int64))
        return last


def take_columns(rows: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """[D, U]: the columns `vocab` of the matrix whose rows are `rows` [V, D], C-contiguous."""
    if native.common_step is not None and rows.dtype in (np.int8, np.float32):
        out = np.empty((rows.shape[1], len(vocab)), rows.dtype)
        native.common_step.take_columns(rows, np.ascontiguousarray(vocab, np.int64), out)
        return out
    return np.ascontiguousarray(rows[vocab].T)
