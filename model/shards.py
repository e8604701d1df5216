"""Token sequences on disk: one flat memory-mapped token array plus an offsets index.

`<stem>.tok` holds every sequence's ids back to back (uint16 while the vocabulary fits,
else uint32); `<stem>.off.npy` holds N+1 offsets. Reading sequence i touches only its
own pages, so a corpus far larger than memory trains from the page cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


class ShardWriter:
    """Appends sequences to `<stem>.tok`; `close()` writes the offsets."""

    def __init__(self, stem: Path, vocab_size: int) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.stem, self.dtype = stem, token_dtype(vocab_size)
        self._tokens = open(stem.with_suffix(".tok"), "wb")  # noqa: SIM115 (held until close())
        self._lengths: list[np.ndarray] = []

    def add(self, sequences: Sequence[Sequence[int]]) -> None:
        if not sequences:
            return
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter((t for s in sequences for t in s), dtype=self.dtype, count=int(lengths.sum()))
        self._tokens.write(flat.tobytes())
        self._lengths.append(lengths)

    def close(self) -> int:
        self._tokens.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(self.stem.with_suffix(".off.npy"), offsets)
        return len(lengths)


class Shard:
    """Read side: `shard[i]` is sequence i's ids as a numpy view of the mapped file."""

    def __init__(self, stem: Path, vocab_size: int) -> None:
        self.offsets = np.load(stem.with_suffix(".off.npy"), mmap_mode="r")
        size = int(self.offsets[-1])
        path = stem.with_suffix(".tok")
        dtype = token_dtype(vocab_size)
        if path.stat().st_size != size * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: {path.stat().st_size} bytes, but its index promises {size} tokens")
        # np.memmap refuses an empty file; an empty shard has nothing to map.
        self.tokens = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def lengths(self) -> np.ndarray:
        """Every sequence's length, uint16 when lengths fit (2 bytes a sequence in memory)."""
        lengths = np.diff(self.offsets)
        return lengths.astype(np.uint16) if len(lengths) and lengths.max() < 2**16 else lengths
