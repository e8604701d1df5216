"""Token-bucketed batches and the masked-LM / next-sentence inputs built from them.

Every random choice derives from (seed, epoch) or (seed, step), so a resumed run
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from service.conventions import CLS_ID, EOS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_IDS

Ids = Sequence[int]


@dataclass(frozen=True)
class Example:
    """One translation example: source ids, and the target ids after its language tag."""

    src: Ids
    tgt: Ids
    tag: int


def pad(seqs: Sequence[Ids]) -> Tensor:
    """Right-pad id sequences into a [B, L] long tensor."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def greedy_cuts(sorted_lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) spans over ascending lengths: each batch as long as its longest member times its
    size stays within `max_tokens` (the longest is its last member)."""
    lengths = sorted_lengths.tolist()
    cuts, start, n = [], 0, len(lengths)
    while start < n:
        lo, hi = start + 1, min(n, start + max(1, max_tokens // max(lengths[start], 1)))
        while lo < hi:  # the largest end with lengths[end - 1] * (end - start) <= max_tokens
            mid = (lo + hi + 1) // 2
            if lengths[mid - 1] * (mid - start) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        cuts.append((start, lo))
        start = lo
    return cuts


@dataclass(frozen=True)
class SamplingSource:
    """One corpus as the sampler sees it: its usable items, their lengths, its weight.

    Each item yields `views` examples (2: both translation directions), all `length` long.
    """

    lengths: np.ndarray  # [N] per item, in padded tokens
    weight: float = 1.0  # expected copies of each item per epoch
    views: int = 1


# Examples are length-sorted within windows of this many, so an epoch's plan costs a few bytes per
# example and no sort over the whole corpus; an epoch that fits one window is sorted as a whole.
SORT_WINDOW = 1 << 20


class BatchStream:
    """An endless stream of batches of example codes over weighted sources, epoch after epoch.

    An epoch takes floor(w) copies of each item of a source of weight w, plus one more with
    probability frac(w), shuffles them, sorts windows by length (random tie-break), cuts token
    batches and shuffles the batches. Every draw derives from (seed, epoch), so a resumed run
    sees exactly the batches the uninterrupted run would have seen. With `world_size` > 1,
    rank r takes every world_size-th batch. A code names (source, item, view): `locate`.
    """

    def __init__(
        self,
        sources: Sequence[SamplingSource],
        max_tokens: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        window: int = SORT_WINDOW,
    ) -> None:
        longest = max((int(s.lengths.max()) for s in sources if len(s.lengths)), default=0)
        if longest == 0:
            raise ValueError("no training examples: every source is empty")
        if max_tokens < longest:
            raise ValueError(f"max_tokens {max_tokens} is below the longest example ({longest} tokens)")
        self.sources, self.max_tokens, self.seed = list(sources), max_tokens, seed
        self.rank, self.world_size, self.window = rank, world_size, window
        sizes = [len(s.lengths) * s.views for s in self.sources]
        self.bases = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.epoch, self.position = 0, 0
        self._plan()

    def _epoch_examples(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        codes, lengths = [], []
        for base, source in zip(self.bases.tolist(), self.sources, strict=False):
            whole, frac = int(source.weight), source.weight - int(source.weight)
            counts = np.full(len(source.lengths), whole, dtype=np.int64)
            if frac > 0:
                counts += rng.random(len(source.lengths)) < frac
            items = np.repeat(np.arange(len(source.lengths), dtype=np.int64), counts)
            views = np.arange(source.views, dtype=np.int64)
            codes.append((base + items[:, None] * source.views + views).ravel())
            lengths.append(np.repeat(source.lengths[items], source.views))
        code_type = np.int32 if self.bases[-1] < 2**31 else np.int64
        return np.concatenate(codes).astype(code_type), np.concatenate(lengths)

    def _plan(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        codes, lengths = self._epoch_examples(rng)
        order = rng.permutation(len(codes))
        codes, lengths = codes[order], lengths[order]
        del order
        spans: list[tuple[int, int]] = []
        for start in range(0, len(codes), self.window):
            end = min(start + self.window, len(codes))
            by_length = np.argsort(lengths[start:end], kind="stable")
            codes[start:end] = codes[start:end][by_length]
            lengths[start:end] = lengths[start:end][by_length]
            spans += [(start + a, start + b) for a, b in greedy_cuts(lengths[start:end], self.max_tokens)]
        batches = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size
        self._codes, self._batches = codes, batches[self.rank : usable : self.world_size]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def next(self) -> np.ndarray:
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._plan()
        start, end = self._batches[self.position]
        self.position += 1
        return self._codes[start:end]

    def locate(self, code: int) -> tuple[int, int, int]:
        """(source index, item index, view) of an example code."""
        source = int(np.searchsorted(self.bases, code, side="right")) - 1
        item, view = divmod(int(code) - int(self.bases[source]), self.sources[source].views)
        return source, item, view

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._plan()


def translation_batch(examples: Sequence[Example]) -> dict[str, Tensor]:
    """src = [x1..xm, </s>] [B, S]; tgt_in = [tag, y1..yn] and tgt_out = [y1..yn, </s>], each [B, T]."""
    return {
        "src": pad([[*e.src, EOS_ID] for e in examples]),
        "tgt_in": pad([[e.tag, *e.tgt] for e in examples]),
        "tgt_out": pad([[*e.tgt, EOS_ID] for e in examples]),
    }


def mask_tokens(
    ids: Tensor, rng: np.random.Generator, vocab_size: int, prob: float = 0.15, reserved: int = len(SPECIAL_IDS)
) -> tuple[Tensor, Tensor]:
    """BERT masking: pick `prob` of the ordinary tokens; of those 80% <mask>, 10% random, 10% kept.

    Ids below `reserved` (control symbols and language tags) are never picked nor drawn as
    replacements. Returns the corrupted inputs and labels that are PAD_ID (ignored) except at
    the picked positions, where they hold the original token.
    """
    ids_np = ids.numpy()
    maskable = ids_np >= reserved
    picked = maskable & (rng.random(ids_np.shape) < prob)
    roll = rng.random(ids_np.shape)
    corrupted = ids_np.copy()
    corrupted[picked & (roll < 0.8)] = MASK_ID
    to_random = picked & (roll >= 0.8) & (roll < 0.9)
    corrupted[to_random] = rng.integers(reserved, vocab_size, size=int(to_random.sum()))
    labels = np.where(picked, ids_np, PAD_ID)
    return torch.from_numpy(corrupted), torch.from_numpy(labels)


def mlm_batch(
    sentences: Sequence[Ids], rng: np.random.Generator, vocab_size: int, prob: float, reserved: int
) -> dict[str, Tensor]:
    """Encoder inputs `[w1..wn, </s>]` with BERT masking; labels PAD_ID where not predicted."""
    inputs, labels = mask_tokens(pad([[*s, EOS_ID] for s in sentences]), rng, vocab_size, prob, reserved)
    return {"mlm_in": inputs, "mlm_labels": labels}


def nsp_batch(
    captions: Sequence[Sequence[Ids]], n_pairs: int, rng: np.random.Generator, max_len: int
) -> dict[str, Tensor]:
    """`<cls> A <sep> B </s>` pairs: label 1 when A and B describe the same image, 0 for a random B.

    `captions[f][i]` is caption i of file f; line i of every file describes image i.
    """
    n_images = min(len(f) for f in captions)
    seqs, labels = [], []
    for _ in range(n_pairs):
        image = int(rng.integers(n_images))
        fa, fb = rng.choice(len(captions), size=2, replace=False)
        positive = bool(rng.random() < 0.5)
        other = image if positive else int((image + rng.integers(1, n_images)) % n_images)
        a, b = captions[fa][image], captions[fb][other]
        half = (max_len - 4) // 2
        seqs.append([CLS_ID, *a[:half], SEP_ID, *b[:half], EOS_ID])
        labels.append(int(positive))
    return {"nsp_in": pad(seqs), "nsp_labels": torch.tensor(labels, dtype=torch.long)}
