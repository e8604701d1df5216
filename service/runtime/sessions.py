"""The exported graphs behind one object: sessions created once, hashes checked at load."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
import onnxruntime as ort

from service.graphs import (
    ALIGNMENT,
    BEAM_WIDTH,
    CACHE_INDIRECTION,
    DECODER_TOP_K,
    PAST_LENGTH,
    decoder_spec,
    encoder_spec,
)
from service.manifest import Manifest, ModelFileError, load_manifest
from service.runtime import denormals, direct_run, native
from service.runtime.beside import Beside
from service.runtime.encoder_segments import SegmentedEncoder, cuts_encoder, split_encoder
from service.runtime.kv_cache import SelfAttentionCache, StoragePool, storage_floats
from service.runtime.libc import libc
from service.runtime.lookups import open_recording_lookups
from service.runtime.packed import discard, packed_dir, packed_graph, packed_key
from service.runtime.projection import (
    NARROW_COLUMNS,
    HostProjection,
    host_projection,
    logits_scratch,
)
from service.runtime.segmented import SegmentedSession
from service.runtime.shortlist import OUTPUT_BIAS, OUTPUT_SCALE, OUTPUT_VOCAB, OUTPUT_WEIGHT, BatchVocab, OutputLayer
from service.runtime.step_segments import host_attention, split_step
from service.runtime.text_tokenizer import load_text_tokenizer
from service.runtime.top_k import STEP_LOGITS, TOP_K_OUTPUTS, normalised_logits, top_k

log = logging.getLogger("mtserve.runtime")
KVList = list[np.ndarray]  # flat [k0, v0, k1, v1, ...], each [B, H, L, K]


@dataclass(frozen=True)
class EncoderOutput:
    hidden: np.ndarray  # [B, S, D]
    cross: KVList  # per decoder layer, [B, H, S, K]
    storage: np.ndarray | None = None  # the flat buffer they view, where taken from a pool (encoder_output)


@dataclass(frozen=True)
class KeptSearch:
    """What a search of one sentence binds, kept for the next search of its shape (OnnxModel.keep_search):
    its sources' mask and encoder outputs, its cache (reset), and its output layer's inputs (refilled),
    each the same arrays, so that the cache's bindings serve again as they are."""

    mask: np.ndarray
    encoded: EncoderOutput
    cache: SelfAttentionCache
    vocab: BatchVocab | None


@dataclass(frozen=True)
class TopStep:
    # [B, DECODER_TOP_K], best first, lower id first on ties; where the host ranks them (a shortlisted
    # step), [B, 2 · the cache's max_beams] where fewer: as many as the search reads
    log_probs: np.ndarray
    ids: np.ndarray  # the same shape
    eos_log_prob: np.ndarray  # [B]
    alignment: np.ndarray | None = None  # [B, S] attention over the source, where asked for


# A graph run takes the configured threads (the wide session) only while nothing else in the
# process is decoding, however few its rows; otherwise one thread, so that concurrent batches (the
# service's workers) each take a core instead of oversubscribing them with several thread pools.
# "Nothing else" counts the searches in progress, not only the runs at this instant: between two
# steps of a search no run is in progress, and a second search's step would take both cores while
# the first one's next step takes one too. Measured in docs/BENCHMARKS.md: a sentence alone
# decodes faster on two threads than on one (a quarter faster at fp32, a little at int8), where
# it used to run on one; 16 HTTP clients keep their throughput.


# A search of at most this many rows (sentences x beam: one sentence at beam 8) is small. Its steps
# are mostly nodes of a few microseconds, where a second thread may cost more than it brings: it
# runs on the threads measured faster for it when the model was loaded (Translator.load).
SMALL_SEARCH_ROWS = 8


# Shapes of single-sentence searches whose arrays and bindings a model keeps for the next search of
# the same shape (OnnxModel.keep_search): each holds a cache and a binding per row count, about 2 MB
# for the committed model's sentences of up to 16 tokens (docs/BENCHMARKS.md). A model that has
# searched no sentence alone for KEPT_IDLE_S lets them go.
KEPT_SEARCHES = 4
KEPT_IDLE_S = 10.0


# A batch of more rows than this is large: what its tensors took goes back to the system once
# the model idles (OnnxModel.large_batch_done).
LARGE_BATCH_ROWS = 32


# A large batch's tensors go back to the system once the model has run no large batch for this
# long: a busy model's next batch would take them again at once (releasing after every batch cost
# about a tenth of the default model's throughput at beam 1; docs/BENCHMARKS.md).
IDLE_RELEASE_S = 0.5


class _IdleRelease:
    """Calls `release` once `used` has not been called for `idle_s`, on a timer thread; again later
    while `release` finds a run in progress (returns False)."""

    def __init__(self, release: Callable[[], bool], idle_s: float = IDLE_RELEASE_S) -> None:
        # Weak: the model holds this, and an unloaded model must go as soon as it is let go.
        self._release = weakref.WeakMethod(release)
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._due: float | None = None  # when to release; None: nothing to release
        self._timer: threading.Timer | None = None

    def used(self) -> None:
        with self._lock:
            self._due = time.monotonic() + self._idle_s
            if self._timer is None:
                self._start(self._idle_s)

    def _start(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if self._due is None:
                return
            wait = self._due - time.monotonic()
            if wait > 0:
                self._start(wait)
                return
            self._due = None
        release = self._release()
        if release is None:
            return
        if not release():
            with self._lock:
                if self._due is None:
                    self._due = time.monotonic()
                if self._timer is None:
                    self._start(self._idle_s)


class _Runs:
    """How many graph runs and searches are in progress, across the caller's threads: in one model
    (whether its memory may be released), or in the whole process (_ALL_RUNS: the choice of threads,
    since the cores are the process's, whichever model decodes).

    `start` and `end` rather than a context manager: a decoder step runs once per token, and a
    generator's set-up costs more than the count itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self.searches = 0
        # [1]: counts every run started and every search started or ended. A loop of runs on one
        # session (common_steps) stops where it moves, to pick the session again.
        self.census = np.zeros(1, np.int64)
        # .searches: those of the calling thread; .widths: each one's choice of threads, outermost first
        self._own = threading.local()

    def others(self) -> bool:
        """Whether a search of another thread is in progress."""
        return self.searches > getattr(self._own, "searches", 0)

    def start(self) -> bool:
        """Counts a run in; returns whether it is alone: no other run, and no search but the
        calling thread's own."""
        with self._lock:
            alone = not self._active and not self.others()
            self._active += 1
            self.census[0] += 1
        return alone

    def end(self) -> None:
        with self._lock:
            self._active -= 1

    @contextlib.contextmanager
    def search(self, narrow: bool | None = None) -> Iterator[None]:
        """Counts a search of the calling thread in; with `narrow` True, its runs take one thread,
        False, as many as _Graph._start allows; None: as an enclosing search of the thread chose.
        The outermost choice holds."""
        with self._lock:
            self.searches += 1
            self.census[0] += 1
        self._own.searches = getattr(self._own, "searches", 0) + 1
        widths: list[bool | None] = self._own.__dict__.setdefault("widths", [])
        widths.append(narrow)
        try:
            yield
        finally:
            widths.pop()
            self._own.searches -= 1
            with self._lock:
                self.searches -= 1
                self.census[0] += 1

    def narrowed(self) -> bool:
        """Whether the calling thread's outermost search holds its runs to one thread."""
        widths: list[bool | None] = getattr(self._own, "widths", [])
        return next((narrow for narrow in widths if narrow is not None), False)


_ALL_RUNS = _Runs()
# The census of a run held to one thread: nothing another thread does moves its choice of session.
_FIXED_CENSUS = np.zeros(1, np.int64)
_FIXED_CENSUS.flags.writeable = False
_T = TypeVar("_T")


class _Graph:
    """One graph as two sessions: `wide` with the configured threads, `narrow` with one; a run takes
    the wide one only while nothing else in the process is decoding (_Runs.start)."""

    def __init__(
        self,
        path: Path,
        threads: int,
        runs: _Runs,
        low_memory: bool = False,
        wide_only: bool = False,
        step: bool = False,
        encoder: bool = False,
    ) -> None:
        # low_memory: the wide session reads the weights from the memory-mapped file rather than
        # keeping a packed copy (for graphs without a packed copy of their own; packed.py).
        # step: a decoder step, cut at its attention nodes for the host's (step_segments.py).
        # encoder: an encoder, cut at its attention nodes where the host computes them (encoder_segments.py).
        segments = None
        encoder_segments = None
        try:
            if step and native.common_step is not None and (attending := host_attention()) != "off":
                segments = split_step(path, cross=attending)
            if encoder and cuts_encoder(path):
                encoder_segments = split_encoder(path)
        except (OSError, ValueError) as exc:  # protobuf's DecodeError is a ValueError
            raise ModelFileError(path, f"cannot read it ({exc})") from exc

        def open_session(threads: int, pack: bool = True) -> ort.InferenceSession | SegmentedSession | SegmentedEncoder:
            if encoder_segments is not None:
                return SegmentedEncoder(encoder_segments, lambda graph: _session(path, threads, pack, graph))
            if segments is None:
                return _session(path, threads, pack)
            return SegmentedSession(segments, lambda graph: _session(path, threads, pack, graph))

        def open_sessions() -> tuple[Any, Any]:
            wide = open_session(threads, pack=not (low_memory and threads > 1))
            return wide, wide if threads == 1 or wide_only else open_session(1)

        (self.wide, self.narrow), self._lookups = open_recording_lookups(path, open_sessions)
        self._runs = runs

    def run(
        self, outputs: list[str], feeds: dict[str, np.ndarray], meanwhile: Callable[[], None] | None = None
    ) -> list[np.ndarray]:
        """The run's outputs; `meanwhile` is called just before it (beside.py)."""
        session = self._start()
        try:
            if meanwhile is not None:
                meanwhile()
            return list(session.run(outputs, feeds))
        finally:
            self._end()

    def run_bound(self, bind: Callable[[ort.InferenceSession], tuple[ort.IOBinding, StepFeeds]]) -> list[np.ndarray]:
        """A run through the IO binding that `bind` makes or updates for the session picked
        (run_again); its outputs come back as arrays of their own."""
        feeds = self.run_again(bind)
        assert feeds is not None  # `bind` always binds
        return [feeds.output(name).copy() for name in feeds.asked]

    def run_again(
        self, bound: Callable[[ort.InferenceSession], tuple[ort.IOBinding, StepFeeds] | None]
    ) -> StepFeeds | None:
        """A run through the binding that `bound` holds for the session picked, its outputs left in
        the feeds' own arrays; None, and no run, where it holds none."""
        session = self._start()
        try:
            held = bound(session)
            if held is None:
                return None
            direct_run.binding_runner(session)(held[0])
            held[1].select()
            return held[1]
        finally:
            self._end()

    def runs_through(
        self,
        bound: Callable[[ort.InferenceSession], tuple[ort.IOBinding, StepFeeds] | None],
        runs: Callable[[Callable[[ort.IOBinding], None], ort.IOBinding, StepFeeds, np.ndarray, int], _T],
    ) -> _T | None:
        """`runs(run, binding, feeds, census, census_at_start)` for the binding that `bound` holds
        for the session picked, counted as one run while it lasts: it runs that session through
        `run` as many times as it likes, while the process's census reads census_at_start, or its
        first run at least (_Runs.census: the session was picked for it). None, and no call, where
        `bound` holds no binding. `run` runs the graph alone: where the host takes a step's top-k,
        `runs` takes it too (StepFeeds.select, or the C loop's own)."""
        session = self._start()
        try:
            held = bound(session)
            if held is None:
                return None
            fixed = self.wide is self.narrow or self._runs.narrowed()
            census = _FIXED_CENSUS if fixed else _ALL_RUNS.census
            return runs(direct_run.binding_runner(session), held[0], held[1], census, int(census[0]))
        finally:
            self._end()

    def release_arena(self, probe: dict[str, np.ndarray], output: str) -> bool:
        """Return the shared arena's free regions to the system, through a run on `probe` (the
        option acts at the end of a run), and the lookup rows the batches mapped to the data file;
        only while no run and no search is in progress here. Whether it ran."""
        alone = self._runs.start()
        try:
            if not alone or self._runs.searches:
                return False
            self.narrow.run([output], probe, _SHRINK)
        finally:
            self._runs.end()
        trim_heap()
        self.release_lookups()
        return True

    def release_lookups(self) -> None:
        """The batches' lookup rows, mapped from the data file, go back to it (lookups.py)."""
        self._lookups.release()

    def _start(self) -> ort.InferenceSession:
        """Counts a run in, in the model and in the process; the session it takes: the wide one
        while nothing else in the process decodes, unless the calling thread's search is held to
        one thread. Each call is matched by one of `_end`."""
        self._runs.start()
        alone = _ALL_RUNS.start()
        return self.wide if alone and not self._runs.narrowed() else self.narrow

    def _end(self) -> None:
        _ALL_RUNS.end()
        self._runs.end()


class CommonSteps(NamedTuple):
    """What OnnxModel.common_steps took: the steps committed, and the outputs of a step run after
    them that it did not take (None where it stopped before running one)."""

    committed: int
    ran: TopStep | None
    kept: int  # the rows that ended in the steps committed (_common_step.c)
    status: int  # the step run and not taken: its selection's status and rows ended, as select_common's
    ended: int


@dataclass
class StepFeeds:
    """A decoder step's inputs, its present K/V bound to the cache's own buffers (written in
    place), and the inputs that change every step, held as arrays of their own so that a binding
    can be updated in place rather than made again.

    Arrays are bound from their own memory (`bind_cpu_input` wraps a contiguous array without a
    copy, as an OrtValue would, in a third of the time): the feeds hold them while bound."""

    arrays: dict[str, np.ndarray]  # inputs bound from these arrays
    pasts: dict[str, ort.OrtValue]  # the cache's buffers as past K/V
    presents: dict[str, ort.OrtValue]  # the same buffers as present K/V
    outputs: dict[str, np.ndarray]  # the outputs asked for, written by each run
    ids: np.ndarray  # [B, 1] int64: the last tokens
    length: np.ndarray  # int32 scalar: the cache's length, this token's position
    beam_width: np.ndarray  # int32 [1]: rows per sentence
    vocab: BatchVocab | None  # the output layer's inputs, for a step that takes a shortlist
    asked: tuple[str, ...] = ()  # the outputs asked for, in order: `outputs`' and `selected`'s
    # top_log_probs and top_ids where the step's graph has no top-k: made by `select` from log_probs
    selected: dict[str, np.ndarray] = field(default_factory=dict)
    # where the host takes the step's output projection too (projection.py): how, and [rows, U] for
    # the logits it makes
    projection: HostProjection | None = None
    logits: np.ndarray | None = None
    # where the step gives its logits (STEP_LOGITS) and the host normalises them: EOS's position in the union
    logits_eos: int | None = None

    def select(self) -> None:
        """The rows' best log-probs and tokens, where the host takes them (top_k.py), from the run's
        log_probs over the bound union, from its logits, normalised here (and its whole log-probs made
        of them where asked for), or from its quantized rows where the host projects them."""
        if not self.selected:
            return
        assert self.vocab is not None  # only a shortlisted step leaves its top-k to the host
        if "log_probs" in self.selected:  # the whole log-probs of a step that gives its logits
            assert self.logits_eos is not None
            log_probs = self.selected["log_probs"]
            np.copyto(log_probs, self.outputs[STEP_LOGITS])
            eos_out = self.selected.get("eos_log_prob", np.empty(len(log_probs), np.float32))
            normalised_logits(log_probs, self.vocab.sentence_bias, self.logits_eos, eos_out)
        if "top_ids" in self.selected:
            scores, vocab, extra = self._ranked()
            top_k(scores, vocab, self.selected["top_log_probs"], self.selected["top_ids"], *extra)

    def host_scores(self) -> tuple[object, ...]:
        """What the C loop of steps ranks each run's top-k from where the host takes it, as `select`
        does (_common_step.c, `common_steps`); none where the graph ranks them."""
        if "top_ids" not in self.selected:
            return ()
        scores, vocab, extra = self._ranked()
        return (scores, vocab, *extra)

    def _ranked(self) -> tuple[np.ndarray, np.ndarray, tuple[tuple[object, ...], ...]]:
        """top_k's arguments for this step: log_probs and the union's vocab; or the step's logits, the
        vocab and what normalises them; or the logits' scratch, the vocab and the projection's."""
        assert self.vocab is not None  # only a shortlisted step leaves its top-k to the host
        if self.projection is not None:
            eos_out = self.selected.get("eos_log_prob", self.outputs.get("eos_log_prob"))
            assert self.logits is not None and eos_out is not None
            return self.logits, self.vocab.vocab, (self.projection.arguments(self.vocab, self.outputs, eos_out),)
        if self.logits_eos is not None:
            normalising = (self.vocab.sentence_bias, self.logits_eos, self.selected["eos_log_prob"])
            return self.outputs[STEP_LOGITS], self.vocab.vocab, (normalising,)
        return self.outputs["log_probs"], self.vocab.vocab, ()

    def output(self, name: str) -> np.ndarray:
        """An output asked for, as the last run (and `select`) left it."""
        return self.selected[name] if name in self.selected else self.outputs[name]

    def bind(self, session: ort.InferenceSession) -> ort.IOBinding:
        binding = session.io_binding()
        for name, array in self.arrays.items():
            binding.bind_cpu_input(name, array)
        for name, value in self.pasts.items():
            binding.bind_ortvalue_input(name, value)
        for name, array in self.outputs.items():
            _bind_output(binding, name, array)
        for name, value in self.presents.items():
            binding.bind_ortvalue_output(name, value)
        return binding

    def follow(self, binding: ort.IOBinding, last_ids: np.ndarray, cache: SelfAttentionCache) -> None:
        """The same sources at the cache's new row count (step 0's one row per sentence become its
        beams): only what depends on the rows is made and bound again; the sources' cross K/V, mask
        and output layer stay bound."""
        self.ids = np.array(last_ids, dtype=np.int64).reshape(-1, 1)
        self.beam_width[0] = cache.beams
        by_row: dict[str, np.ndarray] = {"input_ids": self.ids, CACHE_INDIRECTION: cache.indirection}
        if self.vocab is not None and self.logits_eos is None:  # the bias the graph adds (rows')
            by_row[OUTPUT_BIAS] = (
                self.vocab.row_bias(cache.beams)
                if self.projection is None
                else self.projection.narrow_bias(self.vocab, cache.beams)
            )
        for name, array in by_row.items():
            self.arrays[name] = array
            binding.bind_cpu_input(name, array)
        for name, value in zip(list(self.pasts), cache.values, strict=True):
            self.pasts[name] = value
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(list(self.presents), cache.values, strict=True):
            self.presents[name] = value
            binding.bind_ortvalue_output(name, value)
        self.outputs = {name: np.empty((cache.rows, *a.shape[1:]), a.dtype) for name, a in self.outputs.items()}
        self.selected = {name: np.empty((cache.rows, *a.shape[1:]), a.dtype) for name, a in self.selected.items()}
        if self.logits is not None and self.vocab is not None and self.projection is not None:
            self.logits = logits_scratch(cache.rows, len(self.vocab.vocab), self.projection.floating)
        for name, array in self.outputs.items():
            _bind_output(binding, name, array)


def _bind_output(binding: ort.IOBinding, name: str, array: np.ndarray) -> None:
    """`name` written into `array` (C-contiguous, held by the caller while bound)."""
    binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)


# The decoder step's per-layer names, per layer count: made once, not for every binding.
@functools.cache
def _past_names(layers: int) -> tuple[str, ...]:
    return tuple(n for n in decoder_spec(layers).inputs if n.startswith(("past_key.", "past_value.")))


@functools.cache
def _cross_names(layers: int) -> tuple[str, ...]:
    return tuple(n for n in decoder_spec(layers).inputs if n.startswith("cross_"))


@functools.cache
def _present_names(layers: int) -> tuple[str, ...]:
    return tuple(n for n in decoder_spec(layers).outputs if n.startswith("present_"))


def _check_room(cache: SelfAttentionCache) -> None:
    if cache.full:
        raise ValueError(f"the decoder cache holds {cache.capacity} steps, all used")


def _check_step(last_ids: np.ndarray, mask: np.ndarray, cache: SelfAttentionCache) -> None:
    _check_room(cache)
    if len(last_ids) != cache.rows or len(mask) != cache.sentences:
        raise ValueError(
            f"{len(last_ids)} rows over {len(mask)} sources; the cache holds {cache.rows} over {cache.sentences}"
        )


def step_feeds(
    layers: int,
    vocab_size: int,
    outputs: Sequence[str],
    last_ids: np.ndarray,
    mask: np.ndarray,
    cache: SelfAttentionCache,
    cross: KVList,
    vocab: BatchVocab | None = None,
    host_top_k: bool = False,
    projection: HostProjection | None = None,
    logits_eos: int | None = None,
) -> StepFeeds:
    """The decoder step's feeds for this cache, mask and cross K/V (checked against each other),
    and arrays for the outputs asked for; `vocab`: the output layer's inputs, for a step that takes a
    shortlist (service/runtime/shortlist.py); `host_top_k`: its graph returns log_probs and no top-k,
    and top_log_probs and top_ids come from StepFeeds.select; `logits_eos`: its graph returns its
    logits (STEP_LOGITS) and no log-probs, which StepFeeds.select makes with EOS's at this position of
    the union; `projection`: the model's steps give their quantized rows, and a batch it `takes` has
    its projection made there too (projection.py)."""
    _check_step(last_ids, mask, cache)
    ids, length = np.array(last_ids, dtype=np.int64).reshape(-1, 1), np.array(cache.length, np.int32)
    beam_width = np.array([cache.beams], np.int32)
    arrays: dict[str, np.ndarray] = {
        "input_ids": ids,
        "attention_mask": np.ascontiguousarray(mask, dtype=np.int64),
        PAST_LENGTH: length,
        BEAM_WIDTH: beam_width,
        CACHE_INDIRECTION: cache.indirection,  # updated in place by the cache
    }
    arrays |= dict(zip(_cross_names(layers), cross, strict=True))
    if vocab is not None:
        if len(vocab.sentence_bias) != cache.sentences:
            raise ValueError(
                f"an output layer for {len(vocab.sentence_bias)} sentences; the cache holds {cache.sentences}"
            )
        # the host projects only where it ranks the top-k itself, and the whole log_probs are not asked for
        takes = host_top_k and "log_probs" not in outputs and any(name in TOP_K_OUTPUTS for name in outputs)
        projection = projection if takes and projection is not None and projection.takes(vocab) else None
        if projection is not None:
            arrays |= projection.narrow_inputs(vocab, cache.beams, logits_eos is not None)
        else:
            arrays[OUTPUT_WEIGHT] = vocab.weight
            if logits_eos is None:
                arrays |= {OUTPUT_BIAS: vocab.row_bias(cache.beams), OUTPUT_VOCAB: vocab.vocab}
            if vocab.scale is not None:
                arrays[OUTPUT_SCALE] = vocab.scale
        vocab_size = len(vocab.vocab)
    else:
        projection, logits_eos = None, None
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}  # bound without a copy
    pasts = dict(zip(_past_names(layers), cache.values, strict=True))
    presents = dict(zip(_present_names(layers), cache.values, strict=True))
    rows, top_k = cache.rows, min(DECODER_TOP_K, vocab_size)
    shapes: dict[str, tuple[tuple[int, ...], type]] = {
        "log_probs": ((rows, vocab_size), np.float32),
        "top_log_probs": ((rows, top_k), np.float32),
        "top_ids": ((rows, top_k), np.int64),
        "eos_log_prob": ((rows,), np.float32),
        STEP_LOGITS: ((rows, vocab_size), np.float32),
        ALIGNMENT: ((rows, mask.shape[1]), np.float32),
    }
    made_here = {*TOP_K_OUTPUTS, *(("log_probs", "eos_log_prob") if logits_eos is not None else ())}
    selected_names = [name for name in outputs if host_top_k and name in made_here]
    if selected_names and vocab is None:
        raise ValueError("a step without a shortlist has its own top-k")
    if logits_eos is not None and "top_ids" in selected_names and "eos_log_prob" not in selected_names:
        selected_names.append("eos_log_prob")  # the normalisation writes it
    bound = [name for name in outputs if name not in selected_names]
    scores = "log_probs" if logits_eos is None else STEP_LOGITS
    if selected_names and scores not in bound:
        bound.insert(0, scores)
    logits = None
    if projection is not None:  # the graph's projection spans the narrow union; its rows come out for the host's
        assert vocab is not None
        shapes[scores] = ((rows, NARROW_COLUMNS), np.float32)
        shapes |= projection.output_shapes(rows, vocab)
        made = projection.outputs if logits_eos is not None else (*projection.outputs, "eos_log_prob")
        bound += [name for name in made if name not in bound]
        logits = logits_scratch(rows, len(vocab.vocab), projection.floating)
    arrays_out: dict[str, np.ndarray] = {name: np.empty(*shapes[name]) for name in bound}
    # the host ranks as many as a search of the cache's beams reads (beam.py: 2 a beam), not all DECODER_TOP_K
    ranked = min(top_k, 2 * cache.max_beams)
    made_shapes = shapes | {"top_log_probs": ((rows, ranked), np.float32), "top_ids": ((rows, ranked), np.int64)}
    selected: dict[str, np.ndarray] = {name: np.empty(*made_shapes[name]) for name in selected_names}
    return StepFeeds(arrays, pasts, presents, arrays_out, ids, length, beam_width, vocab, tuple(outputs), selected,
                     projection, logits, logits_eos)  # fmt: skip


def run_step(session: ort.InferenceSession, feeds: StepFeeds) -> list[np.ndarray]:
    """One decoder step on a session of one's own (tests, benchmarks); OnnxModel keeps its bindings.
    The outputs asked for, in order."""
    session.run_with_iobinding(feeds.bind(session))
    feeds.select()
    return [feeds.output(name).copy() for name in feeds.asked]


_TOP_NAMES = ("top_log_probs", "top_ids", "eos_log_prob")  # decode_top's outputs, without alignment


def _top_step(feeds: StepFeeds) -> TopStep:
    """The last run's outputs of a binding of the _TOP_NAMES: its own arrays."""
    return TopStep(feeds.output("top_log_probs"), feeds.output("top_ids"), feeds.output("eos_log_prob"))


@dataclass
class _BoundStep:
    """One session's binding of one cache, kept from step to step while the caller passes the same
    sources (mask, cross K/V, output layer), its rows' inputs bound again when their count changes."""

    names: tuple[str, ...]  # the outputs asked for
    mask: np.ndarray  # the arrays bound, held: the binding is valid while the caller passes these
    cross: KVList
    vocab: BatchVocab | None
    indirection: np.ndarray  # the cache's at the row count bound (a new one comes with a new count)
    feeds: StepFeeds
    binding: ort.IOBinding


def _binds_sources(
    bound: object, names: Sequence[str], mask: np.ndarray, cross: KVList, vocab: BatchVocab | None
) -> bool:
    """Whether `bound` is a binding of these outputs over these sources (the same arrays)."""
    return (
        isinstance(bound, _BoundStep)
        and bound.names == tuple(names)
        and bound.mask is mask
        and bound.cross is cross
        and bound.vocab is vocab
    )


def _rows_by_length(mask: np.ndarray) -> list[tuple[slice | np.ndarray, int]]:
    """The rows of each source length in `mask` [B, S], and that length; a sentence alone as a
    slice, so that its ids and outputs are views (a sentence's host work is counted in microseconds)."""
    if len(mask) == 1:
        return [(slice(0, 1), int(np.count_nonzero(mask)))]
    lengths = mask.sum(axis=1)
    return [(np.flatnonzero(lengths == length), int(length)) for length in np.unique(lengths)]


@functools.cache
def _shared_arena() -> None:
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # Regions of the requested size (not the next power of two), so that each can be freed again.
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    return cast(Callable[[int], int] | None, getattr(libc(), "malloc_trim", None))  # None: not glibc


def trim_heap() -> None:
    """Give the C heap's free pages back (glibc keeps them): after a large batch, whose arrays
    raise glibc's threshold for mapping blocks of their own so that the next ones come from the
    heap, and after a model is let go."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def _session(path: Path, threads: int, pack: bool = True, graph: bytes | None = None) -> ort.InferenceSession:
    """A session of the graph at `path`, or of `graph` (a segment of it: step_segments.py) over the
    external data beside it."""
    options = ort.SessionOptions()
    if graph is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    if not pack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads > 1:
        # Its threads spin between the nodes of a run, not after it: a pool left spinning takes the
        # core that another worker's batch runs on (16 HTTP clients: about 5% more sentences/s, and
        # large batches no slower; docs/BENCHMARKS.md).
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One memory arena for every session of the process, registered once: a per-session arena
    # keeps the peak of the largest batch that session ever ran, four times over; without an
    # arena every step pays for its allocations (docs/BENCHMARKS.md).
    _shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    # Denormals flushed on the pool's threads (denormals.py). onnxruntime also sets the modes of the
    # thread that makes the process's first session: that session is not a model's.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    denormals.first_session()
    try:
        with denormals.kept():
            return ort.InferenceSession(graph or str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
        raise ModelFileError(path, f"onnxruntime cannot load it ({exc})") from exc


@functools.cache
def cpu_has_vnni() -> bool | None:
    """Whether the CPU has VNNI (AVX-512 VNNI or AVX-VNNI); None where /proc/cpuinfo does not say."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


class OnnxModel:
    def __init__(
        self,
        model_dir: Path,
        intra_op_threads: int = 0,
        verify: bool = True,
        low_memory: bool = False,
        packed: Path | bool = True,
    ) -> None:
        """packed: where the graphs' packed copies are kept (packed.py); True: MTSERVE_PACKED_DIR or
        the user's cache directory; False: no copies, each session packs its own."""
        packed_root = packed_dir() if packed is True else (packed or None)
        self.model_dir = model_dir
        # Whether a search's steps may run in the C loop of steps (common_steps); benchmarks turn it off.
        self.steps_in_c = True
        # The threads a run takes alone; 0 leaves it to onnxruntime, which takes the CPUs it may use.
        self.threads = intra_op_threads or len(os.sched_getaffinity(0))
        self.manifest: Manifest = load_manifest(model_dir, verify=verify)
        if self.manifest.precision == "int8" and self.manifest.int8_weight_bits > 7 and cpu_has_vnni() is False:
            log.warning(
                "%s holds int8 graphs with 8-bit weights, but this CPU has no VNNI: its integer kernel may "
                "saturate and cost accuracy; export or import it again (7-bit weights) or serve fp32 graphs "
                "(docs/DEPLOY.md, CPUs)",
                model_dir,
            )
        self.languages = self.manifest.model_languages()
        files, hashes = self.manifest.files, self.manifest.sha256
        runs = self._runs = _Runs()
        # Graphs whose packed copy could not be made or was refused: their sessions pack their own
        # matrices, about twice the memory (reported in /metrics).
        self.unpacked_graphs: list[str] = []

        def graph(role: str, wide_only: bool = False, step: bool = False, encoder: bool = False) -> _Graph:
            """The graph over its packed copy (packed.py) where one can be made, else as exported."""
            path, packed_path = model_dir / files[role], None
            if packed_root is not None:
                key = packed_key(hashes.get(path.name, ""), hashes.get(files.get("weights", ""), ""))
                packed_path = packed_graph(path, key, packed_root, verify)
            if packed_path is not None:
                try:
                    return _Graph(packed_path, intra_op_threads, runs, wide_only=wide_only, step=step, encoder=encoder)
                except ModelFileError as exc:  # a copy damaged on disk, or packed by other kernels
                    log.warning("%s; opening %s as exported, its packed copy made again at its next load", exc, path)
                    discard(packed_path)
            if packed_root is not None:
                self.unpacked_graphs.append(role)
            return _Graph(path, intra_op_threads, runs, low_memory, wide_only, step, encoder)

        self.encoder = graph("encoder", encoder=True)
        self.decoder = graph("decoder", step=True)
        self.has_alignment = ALIGNMENT in {output.name for output in self.decoder.wide.get_outputs()}
        self.output_layer = OutputLayer.load(model_dir, self.manifest)
        takes_shortlist = OUTPUT_WEIGHT in {i.name for i in self.decoder.wide.get_inputs()}
        if takes_shortlist != (self.output_layer is not None):
            raise ModelFileError(
                model_dir / files["decoder"],
                "its output projection reads a shortlist, and the manifest names no output_layer file"
                if takes_shortlist else "the manifest names an output_layer file, and its output projection reads none",
            )  # fmt: skip
        # A step shortlisted by export/shortlist.py returns its log-probs and leaves the top-k to the
        # host (top_k.py); one shortlisted before that has a TopK of its own, used as it is.
        # One shortlisted since gives its logits, and the host normalises them too.
        step_outputs = {output.name for output in self.decoder.wide.get_outputs()}
        self.host_top_k = not set(TOP_K_OUTPUTS) <= step_outputs
        gives_logits = STEP_LOGITS in step_outputs and "log_probs" not in step_outputs
        if self.host_top_k and not (takes_shortlist and ("log_probs" in step_outputs or gives_logits)):
            raise ModelFileError(model_dir / files["decoder"], "its decoder step has no top-k and takes no shortlist")
        eos = self.manifest.special_ids.eos
        self.logits_eos = eos if self.host_top_k and gives_logits else None
        self.host_projection = host_projection(step_outputs, eos) if self.host_top_k else None
        # tag -> target language, where one language has the tag (a shortlist's lexical table is per language)
        tags: dict[int, list[str]] = {}
        for lang, tag in self.languages.tag_ids.items():
            tags.setdefault(tag, []).append(lang)
        self._tag_languages = {tag: langs[0] for tag, langs in tags.items() if len(langs) == 1}
        if self.manifest.generation.replace_unknowns and not self.has_alignment:
            raise ModelFileError(
                model_dir / files["decoder"], "generation.replace_unknowns needs an alignment output; it has none"
            )
        self.mlm_head = graph("mlm_head", wide_only=True).wide if "mlm_head" in files else None
        trim_heap()  # each session packed its matrices on the heap before finding them in the copy
        self._idle_release = _IdleRelease(self.release_arena)
        # large searches' cache storage and encoder outputs, for the next (new_cache, encode)
        self._spare_caches, self._spare_encoded = StoragePool(), StoragePool()
        self._kept: dict[Hashable, KeptSearch] = {}  # keep_search's, oldest first
        self._kept_lock = threading.Lock()
        self._kept_release = _IdleRelease(self.drop_kept_searches, KEPT_IDLE_S)
        # Whether a small search runs faster on one thread than on all: measured by Translator.load.
        self.small_searches_narrow = False
        self.tokenizer = load_text_tokenizer(model_dir, self.manifest)
        self.eos_id, self.pad_id = self.manifest.special_ids.eos, self.manifest.special_ids.pad
        layers = self.manifest.decoder_layers
        self._enc_outputs = list(encoder_spec(layers).outputs)

    def encode(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        into: EncoderOutput | None = None,
        meanwhile: Callable[[], None] | None = None,
        pooled: bool = False,
    ) -> EncoderOutput:
        """ids, mask [B, S] int64 -> hidden states and each layer's cross K/V (zero past each source's end),
        written into `into`'s arrays where given (encoder_output's). `meanwhile` is called as the first
        run starts (Beside.start: host work beside it). `pooled`: sources of several lengths are placed
        in a buffer that an earlier large search gave back, if one fits (search_done).

        Sources of one length run together, unpadded: so each source's states are the same
        whatever else is in the batch.
        """
        padded = into
        if into is not None:
            for out in (into.hidden, *into.cross):
                out.fill(0)
        for rows, length in _rows_by_length(mask):
            feeds = {"input_ids": ids[rows, :length], "attention_mask": mask[rows, :length]}
            part = self.encoder.run(self._enc_outputs, feeds, meanwhile)
            meanwhile = None
            if into is None and len(part[0]) == len(ids) and length == ids.shape[1]:
                return EncoderOutput(part[0], part[1:])  # one length, no padding: nothing to place
            if padded is None:
                padded = self.encoder_output(len(ids), ids.shape[1], self._spare_encoded if pooled else None)
            padded.hidden[rows, :length] = part[0]
            for out, p in zip(padded.cross, part[1:], strict=True):
                out[rows, :, :length] = p
        if padded is None:
            raise ValueError("no sources to encode")
        return padded

    def encoder_output(self, sentences: int, width: int, pool: StoragePool | None = None) -> EncoderOutput:
        """Zeroed arrays for encode's outputs over `sentences` sources of `width` tokens: hidden
        [B, S, D], each layer's cross K/V [B, H, S, K]; views of one buffer, taken from `pool` where given."""
        m = self.manifest
        layers = len(self._enc_outputs) - 1
        hidden_shape, kv_shape = (sentences, width, m.d_model), (sentences, m.n_heads, width, m.head_dim)
        hidden_floats, kv_floats = sentences * width * m.d_model, sentences * m.n_heads * width * m.head_dim
        floats = hidden_floats + layers * kv_floats
        if pool is None:
            storage = np.zeros(floats, np.float32)
        else:
            storage = pool.take(floats)
            storage[:floats].fill(0)
        cross = [storage[hidden_floats + i * kv_floats :][:kv_floats].reshape(kv_shape) for i in range(layers)]
        return EncoderOutput(storage[:hidden_floats].reshape(hidden_shape), cross, None if pool is None else storage)

    def take_kept_search(self, key: Hashable) -> KeptSearch | None:
        """The arrays, cache and bindings that the last search of this shape left (keep_search), for
        a search of the same shape; None where none is kept. Each is taken by one search at a time."""
        with self._kept_lock:
            return self._kept.pop(key, None)

    def keep_search(self, key: Hashable, kept: KeptSearch) -> None:
        """Keeps what a search of one sentence made for the next of its shape: its bindings then
        need no binding again (a third of a millisecond of a sentence's host work, docs/BENCHMARKS.md).
        The KEPT_SEARCHES most recent shapes are kept, none once the model has searched no sentence
        alone for KEPT_IDLE_S, and none once it idles after a large batch."""
        with self._kept_lock:
            self._kept.pop(key, None)
            self._kept[key] = kept
            while len(self._kept) > KEPT_SEARCHES:
                self._kept.pop(next(iter(self._kept)))
        self._kept_release.used()

    def drop_kept_searches(self) -> bool:
        """What keep_search kept goes (its arrays back to the heap, trimmed)."""
        self._forget_kept_searches()
        trim_heap()
        return True

    def _forget_kept_searches(self) -> None:
        with self._kept_lock:
            self._kept.clear()

    def new_cache(self, sentences: int, capacity: int, max_beams: int = 1, pooled: bool = False) -> SelfAttentionCache:
        """An empty self-attention cache for `capacity` steps of `sentences` at one row each, then
        up to `max_beams` (kv_cache.py). `pooled`: in the storage that an earlier large search gave
        back, if one fits (search_done)."""
        m = self.manifest
        dimensions = (m.decoder_layers, m.n_heads, m.head_dim, sentences, capacity, max_beams)
        storage = self._spare_caches.take(storage_floats(*dimensions)) if pooled else None
        return SelfAttentionCache(*dimensions, storage=storage)

    def search_done(self, cache: SelfAttentionCache, encoded: EncoderOutput) -> None:
        """A large search has ended with `cache` and `encoded` (new_cache's and encode's, pooled): their
        storage serves the next large search, until the model idles (release_arena)."""
        self._spare_caches.give(cache.storage)
        if encoded.storage is not None:  # sources of one length: onnxruntime's own outputs, not pooled
            self._spare_encoded.give(encoded.storage)
        self._idle_release.used()

    def decode_step(
        self, last_ids: np.ndarray, mask: np.ndarray, cache: SelfAttentionCache, cross: KVList
    ) -> np.ndarray:
        """last_ids [B, 1] -> log-probs [B, V]; the cache gets this step's keys and values.

        `mask` [N, S] and `cross` [N, H, S, K] hold N sources, B = N · cache.beams: rows
        r·B/N to (r+1)·B/N - 1 are the beams of source r."""
        vocab = None if self.output_layer is None else self.output_layer.full(cache.sentences)
        (log_probs,) = self._step(["log_probs"], last_ids, mask, cache, cross, vocab)
        return log_probs[:, : self.manifest.vocab_size]

    def output_vocab(self, sources: Sequence[Sequence[int]], tags: Sequence[int]) -> BatchVocab | None:
        """The output layer's inputs for these sources decoded from these start tokens: their
        shortlists' union (service/runtime/shortlist.py); None for a model without one."""
        if self.output_layer is None:
            return None
        return self.output_layer.batch(sources, [self._tag_languages.get(int(tag), "") for tag in tags])

    def output_vocab_beside(
        self, sources: Sequence[Sequence[int]], tags: Sequence[int], into: BatchVocab | None = None
    ) -> Beside[BatchVocab | None]:
        """What output_vocab returns, made on a helper thread (beside.py) once started (encode's
        `meanwhile`), where a CPU of the process would idle while the caller runs the encoder: this
        thread's runs hold to one thread and no other search is in progress; else made when asked
        for. `into`, an owned copy of an earlier one (BatchVocab.owned), takes its values where
        their shapes agree, and is returned then."""
        if self.output_layer is None:
            return Beside(lambda: None, on_helper=False)

        def made() -> BatchVocab | None:
            vocab = self.output_vocab(sources, tags)
            return into if into is not None and vocab is not None and into.refill(vocab) else vocab

        idle_cpu = (self.threads == 1 or self._runs.narrowed()) and not _ALL_RUNS.others()
        return Beside(made, on_helper=idle_cpu and len(os.sched_getaffinity(0)) > 1)

    def decode_top(
        self,
        last_ids: np.ndarray,
        mask: np.ndarray,
        cache: SelfAttentionCache,
        cross: KVList,
        alignment: bool = False,
        vocab: BatchVocab | None = None,
    ) -> TopStep:
        """One step (as decode_step) returning only each row's best DECODER_TOP_K log-probs and ids,
        and EOS's log-prob; with `alignment`, also each row's attention over its source. A model
        with a shortlist decodes over `vocab` (output_vocab, kept as its sentences are), or without
        it over the whole vocabulary."""
        if vocab is None and self.output_layer is not None:
            vocab = self.output_layer.full(cache.sentences)
        names = [*_TOP_NAMES, *([ALIGNMENT] if alignment else [])]
        top_log_probs, top_ids, eos_log_prob, *attention = self._step(names, last_ids, mask, cache, cross, vocab)
        return TopStep(top_log_probs, top_ids, eos_log_prob, attention[0] if attention else None)

    def _step(
        self,
        names: list[str],
        last_ids: np.ndarray,
        mask: np.ndarray,
        cache: SelfAttentionCache,
        cross: KVList,
        vocab: BatchVocab | None,
    ) -> list[np.ndarray]:
        m = self.manifest

        def bind(session: ort.InferenceSession) -> tuple[ort.IOBinding, StepFeeds]:
            # Between compactions a step changes only the last tokens and the cache's length
            # (its indirection is updated in place): the binding is updated, not made again. At a
            # new row count over the same sources (step 0's row per sentence become its beams),
            # only the rows' inputs are bound again; a kept cache (reset for another search) keeps a
            # binding per row count instead, so that its next search binds nothing.
            key = (id(session), cache.rows)
            bound = cache.bindings.get(key)
            if not _binds_sources(bound, names, mask, cross, vocab) and not cache.kept:
                bound = None
                for other, step in list(cache.bindings.items()):
                    if other[0] == key[0] and _binds_sources(step, names, mask, cross, vocab):
                        bound = cache.bindings[key] = cache.bindings.pop(other)
                        break
            if isinstance(bound, _BoundStep) and _binds_sources(bound, names, mask, cross, vocab):
                _check_step(last_ids, mask, cache)
                if bound.indirection is cache.indirection:
                    np.copyto(bound.feeds.ids, np.asarray(last_ids).reshape(-1, 1))
                else:
                    bound.feeds.follow(bound.binding, last_ids, cache)
                    bound.indirection = cache.indirection
                bound.feeds.length[...] = cache.length
                cache.step_ids = bound.feeds.ids
                return bound.binding, bound.feeds
            feeds = step_feeds(m.decoder_layers, m.vocab_size, names, last_ids, mask, cache, cross, vocab,
                               self.host_top_k, self.host_projection, self.logits_eos)  # fmt: skip
            binding = feeds.bind(session)
            if not cache.kept:  # the session's bindings over other sources go
                for other in [other for other in cache.bindings if other[0] == key[0]]:
                    del cache.bindings[other]
            cache.bindings[key] = _BoundStep(tuple(names), mask, cross, vocab, cache.indirection, feeds, binding)
            cache.step_ids = feeds.ids
            return binding, feeds

        outputs = self.decoder.run_bound(bind)
        cache.advance()
        return outputs

    def step_again(self, cache: SelfAttentionCache, last: np.ndarray | None) -> TopStep | None:
        """The next step of a search whose last one (decode_top without alignment, or this) ran on
        the same sources, mask, cross K/V and output layer: run on the binding that step left, at
        the cache's length, where the session picked now is that binding's and the cache's rows are
        as bound; None where not (the caller takes decode_top, which binds). `last` [B]: the step's
        input ids; None where the last step's selection wrote them to cache.step_ids itself
        (select_common). A kept cache's bindings all bind its search's kept arrays (beam.py's
        `_start`), so there `last` may start any row count's binding, the first step's too. The
        outputs are the binding's own arrays, valid until the cache's next step: a search reads
        them before it runs the next one."""
        bound = self._bound_again(cache, last)
        if bound is None:
            return None
        feeds = self.decoder.run_again(bound)
        if feeds is None:
            return None
        cache.advance()
        return _top_step(feeds)

    def common_steps(
        self, cache: SelfAttentionCache, steps: int, selection: Sequence[object], last: np.ndarray | None
    ) -> CommonSteps | None:
        """Up to `steps` steps of a search, each run on the binding that its last step left (as
        step_again runs it; `last` as there), then selected and committed in C while the search's
        rules take it so (_common_step.c, `common_steps`; `selection`: its arguments from `k` on).
        None where the C module is not built or no binding holds the cache's rows: the caller takes
        step_again. The run of a step not taken is the last one; its outputs come back (`ran`),
        selected as select_common selects (`status`, `ended`) for the caller's own rules."""
        module = native.common_step
        if module is None or not self.steps_in_c:
            return None
        bound = self._bound_again(cache, last)
        if bound is None:
            return None

        def runs(
            run: Callable[[ort.IOBinding], None], binding: ort.IOBinding, feeds: StepFeeds, census: np.ndarray, at: int
        ) -> CommonSteps:
            # a step without a top-k of its own: C takes each run's, as StepFeeds.select does
            committed, ran, length, kept, status, ended = module.common_steps(
                run, binding, steps, census, at, feeds.length, feeds.output("top_ids"), feeds.output("top_log_probs"),
                cache.history, feeds.ids, cache.length, *selection, *feeds.host_scores(),
            )  # fmt: skip
            cache.advanced_to(length)
            return CommonSteps(committed, _top_step(feeds) if ran else None, kept, status, ended)

        return self.decoder.runs_through(bound, runs)

    def _bound_again(
        self, cache: SelfAttentionCache, last: np.ndarray | None
    ) -> Callable[[ort.InferenceSession], tuple[ort.IOBinding, StepFeeds] | None] | None:
        """What finds and updates, for the session picked, the binding that the cache's last step
        left (step_again); None where none can hold the cache's rows."""
        reboundable = cache.kept and last is not None
        if not reboundable and (cache.step_ids is None or len(cache.step_ids) != cache.rows):
            return None  # a first step, or new rows: no binding holds them

        def bound(session: ort.InferenceSession) -> tuple[ort.IOBinding, StepFeeds] | None:
            step = cache.bindings.get((id(session), cache.rows))
            if not (
                isinstance(step, _BoundStep)
                and (step.feeds.ids is cache.step_ids or reboundable)
                and step.indirection is cache.indirection
                and step.names == _TOP_NAMES
            ):
                return None
            _check_room(cache)
            if last is not None:
                step.feeds.ids[:, 0] = last
            step.feeds.length[...] = cache.length
            cache.step_ids = step.feeds.ids
            return step.binding, step.feeds

        return bound

    @contextlib.contextmanager
    def searching(self, rows: int = 0, narrow: bool | None = None) -> Iterator[None]:
        """Counts a search (a batch's encoding and decoding) of `rows` rows in progress while it lasts:
        graphs run on one thread while another search is in progress in the process (_Runs.start),
        and so do those of a small search (SMALL_SEARCH_ROWS) where `small_searches_narrow`; or
        as `narrow` says, where given. Within another search of the thread that chose, that choice
        holds (widths.py measures a search under a width it sets)."""
        if narrow is None and rows:
            narrow = self.small_searches_narrow and rows <= SMALL_SEARCH_ROWS
        with self._runs.search(narrow), _ALL_RUNS.search(), denormals.flushed():
            yield

    def others_searching(self) -> bool:
        """Whether a search of another thread, of any model, is in progress in the process."""
        return _ALL_RUNS.others()

    def large_batch_done(self) -> None:
        """What a large batch took goes back to the system once this model idles (IDLE_RELEASE_S)."""
        self._idle_release.used()

    def release_arena(self) -> bool:
        """What the batches' tensors took in the shared arena and the C heap goes back to the system,
        and what keep_search kept, unless a run of this model is in progress. Whether it ran."""
        probe = {"input_ids": np.full((1, 1), self.eos_id, np.int64), "attention_mask": np.ones((1, 1), np.int64)}
        if not self.encoder.release_arena(probe, self._enc_outputs[0]):
            return False
        self._forget_kept_searches()
        self._spare_caches.clear()
        self._spare_encoded.clear()
        self.decoder.release_lookups()
        return True

    def mlm_logits(self, hidden: np.ndarray) -> np.ndarray:
        if self.mlm_head is None:
            raise RuntimeError(f"{self.model_dir} has no masked-LM head")
        (logits,) = self.mlm_head.run(["logits"], {"hidden_states": hidden})
        return np.asarray(logits)
