"""The decoder's self-attention cache: preallocated, written in place, reordered by index.

Each layer's keys and values live in one buffer [rows, H, capacity, K] for the whole decode;
the decoder step writes position `length` of every row in place (DecoderMaskedMultiHeadAttention
with a shared past/present buffer, export/graph_builder.py). When beam search picks which
beam each row continues, no key moves: `indirection` [sentences, beams, capacity] records, for
each row and each earlier position, the beam of its sentence that holds it. Rows move only
when finished sentences leave the batch (only those that fill the places freed, see
`compaction_order`) and when step 0's one row per sentence becomes a beam of rows (its one
position). What each shape binds (indirection, views, OrtValues) is made once, so that a cache
`reset` for another search of a sentence alone (OnnxModel.keep_search) binds the same arrays.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from service.runtime import native


class _Shape(NamedTuple):
    """What the cache binds at one shape (sentences, beams): made once per shape and kept, so that a
    search back at a shape (the next search of a kept cache: OnnxModel.take_kept_search) finds the same
    arrays, OrtValues and bindings."""

    indirection: np.ndarray  # [sentences, beams, capacity] int32
    history: np.ndarray  # a view of it: [rows, capacity]
    buffers: list[np.ndarray]  # each layer's keys and values, the first `rows` rows: views
    values: list[ort.OrtValue]  # the same as OrtValues
    own_beam: np.ndarray  # [beams] int32
    sentences: np.ndarray  # arange(sentences)
    row_sentences: np.ndarray  # the sentence of each row


def storage_floats(layers: int, heads: int, head_dim: int, sentences: int, capacity: int, max_beams: int) -> int:
    """The floats that a cache of these dimensions stores (SelfAttentionCache's `storage`)."""
    return 2 * layers * sentences * max_beams * heads * capacity * head_dim


class StoragePool:
    """Flat buffers that finished searches leave for the next ones: their caches' storage, their
    encoder outputs (OnnxModel.new_cache, OnnxModel.encode).

    A fresh buffer's pages are faulted in and zeroed by the system as a search first writes them,
    and given back when it ends: the 1,000 test2016 sentences' int8 pass spent about a twentieth of
    its time there (docs/BENCHMARKS.md). A buffer taken again is memory already mapped. The `size`
    largest buffers given are kept; `clear` lets them all go."""

    def __init__(self, size: int = 2) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._buffers: list[np.ndarray] = []  # largest first

    def take(self, floats: int) -> np.ndarray:
        """The smallest kept buffer of at least `floats` floats, no longer kept; else a new one."""
        with self._lock:
            fitting = [i for i, buffer in enumerate(self._buffers) if len(buffer) >= floats]
            if fitting:
                return self._buffers.pop(fitting[-1])
        return np.empty(floats, np.float32)

    def give(self, buffer: np.ndarray) -> None:
        """`buffer`, which no cache uses any longer, is kept for a next search if among the largest."""
        with self._lock:
            self._buffers.append(buffer)
            self._buffers.sort(key=len, reverse=True)
            del self._buffers[self._size :]

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)


class SelfAttentionCache:
    def __init__(
        self,
        layers: int,
        heads: int,
        head_dim: int,
        sentences: int,
        capacity: int,
        max_beams: int = 1,
        storage: np.ndarray | None = None,
    ) -> None:
        if capacity < 1 or max_beams < 1:
            raise ValueError(f"capacity and max_beams must be at least 1, got {capacity} and {max_beams}")
        self.capacity = capacity
        self.max_beams = max_beams
        self.length = 0  # positions written
        self.beams = 1  # rows per sentence
        # np.empty: pages are committed as positions are written, so room for the longest output
        # at the widest beam costs address space rather than memory; unwritten positions are never read.
        shape = (sentences * max_beams, heads, capacity, head_dim)
        floats = storage_floats(layers, heads, head_dim, sentences, capacity, max_beams)
        if storage is None:
            storage = np.empty(floats, np.float32)
        elif storage.dtype != np.float32 or storage.ndim != 1 or len(storage) < floats:
            raise ValueError(f"a cache of shape {shape} in {2 * layers} arrays needs {floats} floats of storage")
        self.storage = storage  # one flat buffer, which the layers' arrays view (StoragePool)
        size = floats // (2 * layers)
        self._storage = [storage[i * size : (i + 1) * size].reshape(shape) for i in range(2 * layers)]  # k0, v0, ...
        self._shapes: dict[tuple[int, int], _Shape] = {}
        # The runtime's IO bindings of this cache, per session and row count (sessions.py). Another
        # indirection array than a binding's (another shape) tells it that the rows' inputs must be
        # bound again.
        self.bindings: dict[tuple[int, int], object] = {}
        # Whether the cache serves another search after this one (reset): its bindings are then kept,
        # one per row count, rather than bound again to the next row count.
        self.kept = False
        # The bound input ids of the binding the last step ran on (sessions.py): where a step's
        # selection may write the next step's ids (OnnxModel.step_again).
        self.step_ids: np.ndarray | None = None
        self._first_sentences = sentences
        self._use(sentences)

    @property
    def max_rows(self) -> int:
        """The rows its storage holds: its first sentences at max_beams."""
        return len(self._storage[0])

    @property
    def sentences(self) -> int:
        return int(self.indirection.shape[0])

    @property
    def rows(self) -> int:
        return self.sentences * self.beams

    @property
    def full(self) -> bool:
        return self.length >= self.capacity

    @property
    def history(self) -> np.ndarray:
        """[rows, capacity] int32, a view of the indirection: the beam whose slot holds each position
        of each row's history (what `reorder` reorders)."""
        return self._history

    def reset(self) -> None:
        """Empty again, at one row per sentence, for another search of as many sentences: what was
        made for its shapes (arrays, OrtValues, the runtime's bindings) serves again. Only before
        a compaction has dropped sentences."""
        if self.sentences != self._first_sentences:
            raise ValueError(f"a cache of {self.sentences} sentences cannot start again at {self._first_sentences}")
        self.length = 0
        self.beams = 1
        self.step_ids = None
        self._use(self._first_sentences)

    def advance(self) -> None:
        """After a step: position `length` of each row holds that row's own key and value."""
        self.indirection[:, :, self.length] = self._own_beam
        self.length += 1

    def advanced_to(self, length: int) -> None:
        """After steps whose positions up to `length` were written as `advance` writes them, by the
        search's C loop (_common_step.c, common_steps)."""
        if not self.length <= length <= self.capacity:
            raise ValueError(f"a cache of {self.length} positions cannot advance to {length} of {self.capacity}")
        self.length = length

    def reorder(self, rows: np.ndarray, sentences: np.ndarray | None = None) -> None:
        """Row i of the next step continues row `rows[i]` of the last one, a row of the same sentence.

        `sentences`: the batch keeps only these (indices into the current batch, in their new
        order); None keeps every sentence where it is. The beam width is len(rows) / the
        sentences kept, and may grow after step 0 up to max_beams.
        """
        rows = np.asarray(rows)
        n = self.length
        # Checked on every step of every search, so with as few array operations as it takes. The
        # common step keeps every sentence at its beams: only the rows' histories are reordered.
        same = sentences is None and len(rows) == len(self._row_sentences)
        if same and native.common_step is not None and rows.dtype == np.int64:
            native.common_step.reorder_history(self._history, rows, self.beams, n)
            return
        if same:
            kept, beams, expected = self._sentences, self.beams, self._row_sentences
        else:
            kept = self._sentences if sentences is None else np.asarray(sentences)
            beams, remainder = divmod(len(rows), max(len(kept), 1))
            if remainder or beams < self.beams or len(rows) > self.max_rows:
                raise ValueError(
                    f"{len(rows)} rows do not make {len(kept)} sentences of {self.beams} to max_beams beams"
                )
            known = self._shapes.get((len(kept), beams)) if sentences is None else None
            expected = np.repeat(kept, beams) if known is None else known.row_sentences
        if ((rows if self.beams == 1 else rows // self.beams) != expected).any():
            raise ValueError("a row cannot continue a row of another sentence")
        if self.beams == 1:  # every position written is its sentence's one beam's, as a fresh indirection says
            if not same:
                self._move(kept, beams)
            return
        history = self._history[rows, :n]  # beams within each sentence
        if not same:
            self._move(kept, beams)
        self._history[:, :n] = history

    def _move(self, sentences: np.ndarray, beams: int) -> None:
        """Sentence sentences[i] becomes sentence i, at `beams` rows; beam b keeps its written
        positions (beams a sentence did not have stay unwritten: no index names them yet)."""
        places = np.arange(len(sentences))
        moving = sentences * self.beams != places * beams  # a sentence's rows move together, or stay
        if moving.any():
            beam = np.arange(self.beams)
            old = (sentences[moving, None] * self.beams + beam).ravel().astype(np.int64, copy=False)
            new = (places[moving, None] * beams + beam).ravel().astype(np.int64, copy=False)  # ascending
            n = self.length
            kernels = native.common_step
            for storage in self._storage:
                if kernels is None or not kernels.move_rows(storage, old, new, n):
                    storage[new, :, :n] = storage[old, :, :n]  # the right side is gathered first
        self.beams = beams
        self._use(len(sentences))

    def _use(self, sentences: int) -> None:
        """The cache at `sentences` of `self.beams` rows, its indirection all zeros."""
        shape = self._shapes.get((sentences, self.beams))
        if shape is None:
            indirection = np.zeros((sentences, self.beams, self.capacity), np.int32)
            rows = sentences * self.beams
            buffers = [storage[:rows] for storage in self._storage]  # contiguous prefixes
            shape = self._shapes[(sentences, self.beams)] = _Shape(
                indirection,
                indirection.reshape(rows, self.capacity),  # a view: row -> its positions' beams
                buffers,
                [ort.OrtValue.ortvalue_from_numpy(b) for b in buffers],
                np.arange(self.beams, dtype=np.int32),
                np.arange(sentences),
                np.repeat(np.arange(sentences), self.beams),
            )
        else:
            shape.indirection.fill(0)
        self.indirection, self._history = shape.indirection, shape.history
        self.buffers, self.values = shape.buffers, shape.values
        self._own_beam, self._sentences, self._row_sentences = shape.own_beam, shape.sentences, shape.row_sentences


def compaction_order(kept: np.ndarray) -> np.ndarray:
    """The order of the surviving sentences (sorted indices) after a compaction that moves the
    fewest: each survivor among the first len(kept) places stays, and survivors from beyond
    fill the places freed."""
    places = len(kept)
    order = np.arange(places)
    staying = kept[kept < places]
    holes = np.setdiff1d(order, staying, assume_unique=True)
    order[holes] = kept[kept >= places]
    return order


def compact_rows(arrays: list[np.ndarray], order: np.ndarray) -> list[np.ndarray]:
    """Each array's rows as `order` (compaction_order's) lists them, moved in place: only the
    rows from beyond the kept prefix move, into the places freed. Returns the prefixes, views
    of the same memory; the arrays' other rows are left as they were."""
    places = np.arange(len(order))
    moving = order != places
    for a in arrays:
        a[places[moving]] = a[order[moving]]  # sources lie beyond the prefix: none is overwritten first
    return [a[: len(order)] for a in arrays]
