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


def token_buckets(lengths: Sequence[int], max_tokens: int, rng: np.random.Generator) -> list[list[int]]:
    """Group indices of similar length into batches of at most `max_tokens` padded tokens.

    Sorting with a random tie-break keeps padding low while varying batch
    composition from epoch to epoch; batch order is shuffled.
    """
    lengths_arr = np.asarray(lengths)
    order = np.lexsort((rng.random(len(lengths_arr)), lengths_arr))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for idx in order.tolist():
        longest_if_added = max(longest, int(lengths_arr[idx]))
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], int(lengths_arr[idx])
        current.append(idx)
        longest = longest_if_added
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


class BatchStream:
    """An endless stream of index batches over one dataset, epoch after epoch.

    With `world_size` > 1, rank r takes every world_size-th batch of an epoch.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int, rank: int = 0, world_size: int = 1):
        if max_tokens < max(lengths):
            raise ValueError(f"max_tokens {max_tokens} is below the longest example ({max(lengths)} tokens)")
        self.lengths, self.max_tokens, self.seed = lengths, max_tokens, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._batches = self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = token_buckets(self.lengths, self.max_tokens, rng)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def next(self) -> list[int]:
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._epoch_batches()
        batch = self._batches[self.position]
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._batches = self._epoch_batches()


def translation_batch(examples: Sequence[Example]) -> dict[str, Tensor]:
    """src = [x1..xm, </s>] [B, S]; tgt_in = [tag, y1..yn] and tgt_out = [y1..yn, </s>], each [B, T]."""
    return {
        "src": pad([[*e.src, EOS_ID] for e in examples]),
        "tgt_in": pad([[e.tag, *e.tgt] for e in examples]),
        "tgt_out": pad([[*e.tgt, EOS_ID] for e in examples]),
    }


def mask_tokens(ids: Tensor, rng: np.random.Generator, vocab_size: int, prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT masking: pick `prob` of the non-special tokens; of those 80% <mask>, 10% random, 10% kept.

    Returns the corrupted inputs and labels that are PAD_ID (ignored) except at
    the picked positions, where they hold the original token.
    """
    ids_np = ids.numpy()
    maskable = ~np.isin(ids_np, list(SPECIAL_IDS))
    picked = maskable & (rng.random(ids_np.shape) < prob)
    roll = rng.random(ids_np.shape)
    corrupted = ids_np.copy()
    corrupted[picked & (roll < 0.8)] = MASK_ID
    to_random = picked & (roll >= 0.8) & (roll < 0.9)
    corrupted[to_random] = rng.integers(len(SPECIAL_IDS), vocab_size, size=int(to_random.sum()))
    labels = np.where(picked, ids_np, PAD_ID)
    return torch.from_numpy(corrupted), torch.from_numpy(labels)


def mlm_batch(sentences: Sequence[Ids], rng: np.random.Generator, vocab_size: int, prob: float) -> dict[str, Tensor]:
    """Encoder inputs `[w1..wn, </s>]` with BERT masking; labels PAD_ID where not predicted."""
    inputs, labels = mask_tokens(pad([[*s, EOS_ID] for s in sentences]), rng, vocab_size, prob)
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
