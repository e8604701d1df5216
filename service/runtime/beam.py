"""Batched beam search in numpy over the ONNX decoder step.

- batch x beam flattened into one row axis of size n·K;
- score = Σ log p / length^α, where the length counts EOS (CTranslate2's convention);
- a hypothesis ends on EOS among the K best continuations; a sentence ends when K have
  (`early_stopping`; otherwise transformers' rule: the K best endings are kept, and a sentence
  ends when no running beam, normalised at the current length, beats the worst of them);
- at the length limit a hypothesis is cut, or with `forced_eos` ends on EOS at probability 1
  (transformers' forced_eos_token_id);
- keys and values stay where the decoder step wrote them: each row reads its history through
  the cache's beam indices (service/runtime/kv_cache.py); finished sentences leave the batch;
- ties are broken by the lower token id, so a sentence decodes the same alone or in any batch;
- a repetition guard stops runaway loops of the same 1- to 4-gram, and degenerate hypotheses
  rank last (both per model: the manifest's generation, an operator setting, a request).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import NamedTuple

import numpy as np

from service.conventions import MAX_LENGTH_CAP, max_target_length
from service.graphs import MAX_BEAM
from service.manifest import Generation
from service.runtime import native
from service.runtime.degenerate import Quality, mark_degenerate, sane_first
from service.runtime.kv_cache import SelfAttentionCache, compact_rows, compaction_order
from service.runtime.sessions import LARGE_BATCH_ROWS, KeptSearch, KVList, OnnxModel
from service.runtime.shortlist import BatchVocab

# Sources are padded to a multiple of this many tokens. Attention sums over the source in
# vector lanes of 16 floats: with the width a multiple of 16, the padding only ever adds exact
# zeros to each lane, so a sentence's scores do not move with the longest source of its
# batch (int8 graphs would turn such a rounding difference into a different score).
SOURCE_WIDTH_STEP = 16

# A token may not extend a run of the same n-gram beyond this many repeats (n = index).
MAX_REPEATS = {1: 4, 2: 3, 3: 3, 4: 3}
# A loop of period n repeats the token n back: only a token among the last LOOP_WINDOW can close one.
LOOP_WINDOW = max(MAX_REPEATS)


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without the language tag and EOS
    score: float  # length-normalised
    log_prob: float  # Σ log p, EOS included
    ended: bool = True  # False: cut at the maximum length, no EOS generated
    quality: Quality = "ok"  # service/runtime/degenerate.py
    # Per token, the source position (from the start of the span asked for) its step attended to
    # most; empty unless the search was given spans (beam_search).
    alignment: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        """Generated tokens, EOS included when there is one."""
        return len(self.tokens) + int(self.ended)


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 1.0
    max_length: int = 0  # 0: the shared rule, max_target_length(source tokens)
    repetition_guard: bool = True  # a token may not extend a run of a repeated 1- to 4-gram (runaway)
    cut_degenerate: bool = True  # degenerate hypotheses rank last, only-degenerate output is cut (degenerate.py)
    # Rules where beam searches differ; the defaults are mtserve's (and CTranslate2's) choices.
    proportional_limit: bool = True  # the limit is also max_target_length(source tokens)
    early_stopping: bool = True  # a sentence ends once beam_size hypotheses have ended
    forced_eos: bool = False  # at the limit hypotheses end on EOS (log-prob 0) instead of being cut
    min_length: int = 0  # EOS may not come before this many tokens (CTranslate2's min_decoding_length)
    replace_unknowns: bool = False  # unknown output tokens become the source pieces they attend to most

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= MAX_BEAM:
            raise ValueError(f"beam_size must lie in 1..{MAX_BEAM}, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must lie in 1..beam_size ({self.beam_size}), got {self.n_best}")
        if self.max_length < 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}")

    @classmethod
    def from_generation(
        cls,
        generation: Generation,
        n_best: int = 1,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        repetition_guard: bool | None = None,
    ) -> DecodeOptions:
        """A request's choices over a model's own defaults (its manifest's generation); None: the model's.
        `repetition_guard` switches the guard and the cut of degenerate output together."""
        return cls(
            beam_size=max(beam_size or generation.beam_size, n_best),
            n_best=n_best,
            length_penalty=generation.length_penalty if length_penalty is None else length_penalty,
            max_length=max_length or generation.max_length,
            proportional_limit=generation.proportional_limit,
            early_stopping=generation.early_stopping,
            forced_eos=generation.forced_eos,
            min_length=generation.min_length,
            replace_unknowns=generation.replace_unknowns,
            repetition_guard=generation.repetition_guard if repetition_guard is None else repetition_guard,
            cut_degenerate=generation.cut_degenerate if repetition_guard is None else repetition_guard,
        )

    def limit(self, source_tokens: int) -> int:
        """Most target tokens of a hypothesis, EOS included."""
        if not self.proportional_limit:
            return self.max_length or MAX_LENGTH_CAP
        rule = max_target_length(source_tokens)
        return min(rule, self.max_length) if self.max_length else rule


def guard_override(setting: str) -> bool | None:
    """A `--repetition-guard` or MTSERVE_REPETITION_GUARD value: on, off, or None for the model's own."""
    return {"on": True, "off": False}.get(setting)


def runaway(tokens: Sequence[int], nxt: int) -> bool:
    """Would appending `nxt` repeat some n-gram (n ≤ 4) back to back more than MAX_REPEATS[n] times?"""
    if nxt not in tokens[-LOOP_WINDOW:]:
        return False
    seq = [*tokens, nxt]
    for n, limit in MAX_REPEATS.items():
        span = n * (limit + 1)
        if len(seq) >= span:
            tail = seq[-span:]
            if all(tail[i] == tail[i % n] for i in range(span)):
                return True
    return False


def _recent_repeats(hist: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """runaway's own first check, over many candidates at once: whether each of `tokens` is among
    the last LOOP_WINDOW of the row of `hist` it extends (`rows`, same shape); only such a token can
    close a loop."""
    return np.asarray((hist[:, -LOOP_WINDOW:][rows] == tokens[..., None]).any(axis=-1))


def _ranked(
    hyps: list[Hypothesis], source: Sequence[int], n_best: int, options: DecodeOptions, eos: int
) -> list[Hypothesis]:
    """The n_best to return: sane ones first and only-degenerate output cut, or by score alone, marked.
    degenerate.py judges a source as ending with EOS; a model whose sources have none gets it added."""
    if not source or source[-1] != eos:
        source = [*source, eos]
    if options.cut_degenerate:
        return sane_first(hyps, source, n_best)
    return mark_degenerate(sorted(hyps, key=lambda h: -h.score)[:n_best], source)


def _pad_sources(sources: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = -(-max(len(s) for s in sources) // SOURCE_WIDTH_STEP) * SOURCE_WIDTH_STEP
    ids = np.full((len(sources), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sources), width), dtype=np.int64)
    for i, s in enumerate(sources):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


# Finished sentences leave the running batch once they make up this share of its rows.
# Until then they ride along, their outputs ignored: dropping them copies every layer's
# cross keys and values, which costs more than decoding a few extra rows for some steps.
COMPACT_SHARE = 0.15


def _compact(finished_rows: int, rows: int) -> bool:
    return finished_rows >= COMPACT_SHARE * rows


def _prefix_length(prefixes: Sequence[Sequence[int]]) -> int:
    lengths = {len(p) for p in prefixes}
    if len(lengths) > 1:
        raise ValueError(f"decoder prefixes of one batch must have one length, got {sorted(lengths)}")
    return lengths.pop() if lengths else 0


class _Aligner:
    """Where each row's attention peaks within its source's span: the argmax over the positions
    the span covers (the first on ties, as CTranslate2's max_element), from the span's start."""

    def __init__(self, spans: Sequence[tuple[int, int]], width: int) -> None:
        self.start = np.array([start for start, _ in spans], dtype=np.int64)
        end = np.array([end for _, end in spans], dtype=np.int64)
        positions = np.arange(width)[None, :]
        self.outside = (positions < self.start[:, None]) | (positions >= end[:, None])  # [n, S]

    def peaks(self, attention: np.ndarray | None, alive: np.ndarray, beams: int) -> np.ndarray:
        """attention [rows, S] of the sentences `alive`, `beams` rows each -> [rows] positions."""
        assert attention is not None, "the decoder step returned no alignment"
        outside = np.repeat(self.outside[alive], beams, axis=0)
        return np.asarray(np.where(outside, -1.0, attention).argmax(axis=1) - np.repeat(self.start[alive], beams))


class _Start(NamedTuple):
    """What both searches begin from: the sources encoded, each sentence's limits, an empty cache,
    and the decoder run over the start tokens and forced prefixes, one row per sentence."""

    mask: np.ndarray  # [n, S]
    cross: KVList
    limits: np.ndarray  # [n] most tokens each may generate, EOS included
    min_length: int  # EOS may not come before this many generated tokens
    cache: SelfAttentionCache
    last: np.ndarray  # [n] the next step's input ids
    vocab: BatchVocab | None  # the output layer's shortlist, for a model with one
    keep_arrays: Callable[[], None]  # called once the search has ended well: its arrays serve the next


def _start(
    model: OnnxModel,
    sources: Sequence[Sequence[int]],
    tags: Sequence[int],
    options: DecodeOptions,
    prefixes: Sequence[Sequence[int]],
    max_beams: int,
    alignment: bool,
) -> _Start:
    """A forced prefix counts towards the length limits, as it does towards CTranslate2's
    max_decoding_length and min_decoding_length, and is not scored.

    A sentence alone without a prefix or alignment (most requests) takes the arrays, cache and
    bindings that the last search of its shape left (OnnxModel.keep_search): the same computation
    in the same arrays, without binding them again."""
    ids, mask = _pad_sources(sources, model.pad_id)
    forced = _prefix_length(prefixes)
    limits = np.array([max(1, options.limit(len(s)) - forced) for s in sources])
    capacity = int(limits.max()) + forced
    last = np.asarray(tags, dtype=np.int64)
    if len(sources) > 1 or forced or alignment:
        made_vocab = model.output_vocab_beside(sources, tags)
        large = len(sources) * max_beams > LARGE_BATCH_ROWS  # its memory serves the next large search
        encoded = model.encode(ids, mask, meanwhile=made_vocab.start, pooled=large)  # the vocabulary made meanwhile
        cross = encoded.cross
        cache = model.new_cache(len(sources), capacity, max_beams, pooled=large)
        vocab = made_vocab()
        for position in range(forced):
            model.decode_top(last[:, None], mask, cache, cross, vocab=vocab)
            last = np.asarray([p[position] for p in prefixes], dtype=np.int64)
        search_done = functools.partial(model.search_done, cache, encoded) if large else lambda: None
        return _Start(mask, cross, limits, options.min_length - forced, cache, last, vocab, search_done)
    # One shape for every source of the width, at any length limit up to the rule's
    width = ids.shape[1]
    key = (width, max(capacity, max_target_length(width)), max_beams)
    kept = model.take_kept_search(key)
    if kept is None:
        cache = model.new_cache(1, key[1], max_beams)
        cache.kept = True
        kept = KeptSearch(mask, model.encoder_output(1, width), cache, None)
    made_vocab = model.output_vocab_beside(sources, tags, into=kept.vocab)
    if kept.mask is not mask:  # taken, not made now: this sentence's mask into its arrays, its cache emptied
        np.copyto(kept.mask, mask)
        kept.cache.reset()
    cross = model.encode(ids, kept.mask, kept.encoded, made_vocab.start).cross  # the vocabulary made meanwhile
    vocab = made_vocab()
    if vocab is not None and vocab.shared:  # the whole vocabulary: decode_top's own (OutputLayer.full)
        vocab = None
    if vocab is not kept.vocab:  # none kept, or of another shape
        kept.cache.bindings.clear()  # bound to the arrays replaced
        kept = replace(kept, vocab=None if vocab is None else vocab.owned())
    keep_arrays = functools.partial(model.keep_search, key, kept)
    return _Start(kept.mask, cross, limits, options.min_length, kept.cache, last, kept.vocab, keep_arrays)


def greedy_search(
    model: OnnxModel,
    sources: Sequence[Sequence[int]],
    tags: Sequence[int],
    options: DecodeOptions,
    prefixes: Sequence[Sequence[int]] = (),
    spans: Sequence[tuple[int, int]] = (),
) -> list[list[Hypothesis]]:
    """The beam-1 fast path: argmax per step, no beam bookkeeping."""
    mask, cross, limits, min_length, cache, last, vocab, keep_arrays = _start(
        model, sources, tags, options, prefixes, 1, bool(spans)
    )
    aligner = _Aligner(spans, mask.shape[1]) if spans else None
    alive = np.arange(len(sources))
    tokens: list[list[int]] = [[] for _ in sources]
    aligned: list[list[int]] = [[] for _ in sources]
    log_prob = np.zeros(len(sources))
    results: list[list[Hypothesis]] = [[] for _ in sources]
    riding = np.zeros(len(sources), dtype=bool)  # finished, still in the batch (see COMPACT_SHARE)
    eos = model.eos_id
    for step in range(int(limits.max())):
        top = model.decode_top(last[:, None], mask, cache, cross, aligner is not None, vocab)
        peaks = aligner.peaks(top.alignment, alive, 1) if aligner is not None else None
        length = step + 1
        keep = []
        for row, sent in enumerate(alive):
            if riding[row]:
                continue
            token, token_log_prob = int(top.ids[row, 0]), float(top.log_probs[row, 0])  # ties: lower id
            if token == eos and step < min_length:  # too early to end: the best other token
                token, token_log_prob = int(top.ids[row, 1]), float(top.log_probs[row, 1])
            if options.forced_eos and length >= limits[sent]:
                token, token_log_prob = eos, 0.0
            elif token != eos and options.repetition_guard and runaway(tokens[sent], token):
                token, token_log_prob = eos, float(top.eos_log_prob[row])  # stop a runaway loop here
            log_prob[sent] += token_log_prob
            done = token == eos or length >= limits[sent]
            if token != eos:
                tokens[sent].append(token)
                if peaks is not None:
                    aligned[sent].append(int(peaks[row]))
            if done:
                score = log_prob[sent] / length**options.length_penalty
                results[sent] = [
                    Hypothesis(tokens[sent], float(score), float(log_prob[sent]), token == eos,
                               alignment=tuple(aligned[sent]))
                ]  # fmt: skip
            else:
                keep.append(row)
        if not keep:
            break
        riding[np.setdiff1d(np.arange(len(alive)), keep)] = True
        if _compact(int(riding.sum()), len(alive)):
            rows = compaction_order(np.asarray(keep, dtype=np.int64))
            cache.reorder(rows, rows)  # finished rows leave the cache
            alive, mask, cross, riding = alive[rows], mask[rows], compact_rows(cross, rows), riding[rows]
            vocab = None if vocab is None else vocab.kept(rows)
        last = np.asarray([tokens[s][-1] if tokens[s] else eos for s in alive], dtype=np.int64)
    keep_arrays()
    return [_ranked(r, source, 1, options, eos) for r, source in zip(results, sources, strict=True)]


def _cells(mask: np.ndarray) -> list[tuple[int, int]]:
    """(row, column) of each True of a 2-D mask, row by row, as Python ints: np.nonzero's pairs
    in fewer array operations (most steps have none)."""
    columns = mask.shape[1]
    return [divmod(cell, columns) for cell in np.flatnonzero(mask).tolist()]


# select_common's status for a step taken whole and committed (_common_step.c).
COMMITTED = 3

# Up to this many candidates, a search's per-step checks run faster as plain Python over lists
# than as array operations, each of which costs microseconds whatever its size.
FEW_CANDIDATES = 40


def _closing_loops(hist: np.ndarray, rows: np.ndarray, tokens: np.ndarray, among: np.ndarray | bool) -> np.ndarray:
    """Which of `tokens` (those `among` asks about) close a runaway loop on the row of `hist` each
    extends (`rows`, same shape). Only a token among its row's last LOOP_WINDOW can close one;
    those are checked in full."""
    closing = _recent_repeats(hist, rows, tokens) & among
    for i, j in _cells(closing):
        closing[i, j] = runaway(hist[rows[i, j]].tolist(), int(tokens[i, j]))
    return closing


def _runaway_among(hist: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> bool:
    """Whether any of `tokens` closes a runaway loop on the row it extends (_closing_loops). A token
    among its row's last LOOP_WINDOW (a suspect) comes about one step in ten of natural text."""
    if rows.size <= FEW_CANDIDATES:
        tails = hist[:, -LOOP_WINDOW:].tolist()
        pairs = zip(rows.ravel().tolist(), tokens.ravel().tolist(), strict=True)
        return any(token in tails[row] and runaway(hist[row].tolist(), token) for row, token in pairs)
    return bool(_closing_loops(hist, rows, tokens, True).any())


class _Chosen(NamedTuple):
    """A step taken in C: the next rows, their last tokens, scores and histories, and the rows that
    ended (EOS among their sentence's K best): (sentence, row, score) each, in rank order.
    `committed`: the cache's history is reordered and the next step's ids written already."""

    next_rows: np.ndarray
    last: np.ndarray
    scores: np.ndarray
    hist: np.ndarray
    ended: list[tuple[int, int, float]]
    committed: bool = False
    suspect: bool = False  # a token that goes on is among the last LOOP_WINDOW of its row: _runaway_among asks


def _native_common(
    module: ModuleType,
    step_ids: np.ndarray,
    step_log_probs: np.ndarray,
    scores: np.ndarray,
    hist: np.ndarray,
    k: int,
    eos: int,
    guard: bool,
    cache: SelfAttentionCache,
) -> _Chosen | None:
    """The step chosen in C where K candidates of every sentence go on; None where not (the full
    selection then takes it). A step that every row survives, at K rows a sentence already, is
    committed there too: the cache's history reordered and the next ids written to its binding
    (OnnxModel.step_again). Whether a suspect token closes a runaway loop is the caller's to ask:
    not where the step's endings end the search."""
    n, rows = len(scores), len(scores) * k
    next_rows, last = np.empty(rows, np.int64), np.empty(rows, np.int64)
    next_scores, next_hist = np.empty((n, k)), np.empty((rows, hist.shape[1] + 1), np.int64)
    ended_rows, ended_scores, ended_sentences = np.empty(rows, np.int64), np.empty(rows), np.empty(rows, np.int64)
    commit = () if cache.step_ids is None else (cache.history, cache.length, cache.step_ids)
    status, ended = module.select_common(
        step_ids, step_log_probs, scores, hist, k, eos, LOOP_WINDOW if guard else 0,
        next_rows, last, next_scores, next_hist, ended_rows, ended_scores, ended_sentences, *commit,
    )  # fmt: skip
    if status == COMMITTED:
        return _Chosen(next_rows, last, next_scores, next_hist, [], committed=True)
    if status == 0:
        return None
    endings = []
    if ended:
        sentences, ended_at, scored = ended_sentences[:ended], ended_rows[:ended], ended_scores[:ended]
        endings = list(zip(sentences.tolist(), ended_at.tolist(), scored.tolist(), strict=True))
    return _Chosen(next_rows, last, next_scores, next_hist, endings, suspect=status == 2)


# MAX_REPEATS as the C loop of steps reads it: the limit of each n at index n (0: no rule).
_MAX_REPEATS_BY_N = np.zeros(max(MAX_REPEATS) + 1, np.int64)
_MAX_REPEATS_BY_N[list(MAX_REPEATS)] = list(MAX_REPEATS.values())
_MAX_REPEATS_BY_N.flags.writeable = False


class _Ahead:
    """Where the C loop of steps (OnnxModel.common_steps) writes what each step it takes leaves:
    the histories, scores, rows and last tokens, two of each written in turn, and the rows that
    ended; for a search of up to n sentences at beam k and `limit` tokens. Views of their first
    rows serve a batch that finished sentences have left."""

    def __init__(self, n: int, k: int, limit: int) -> None:
        rows = n * k
        self.k = k
        self.hist = (np.empty((rows, limit + 1), np.int64), np.empty((rows, limit + 1), np.int64))
        self.scores = (np.empty((n, k)), np.empty((n, k)))
        self.rows = (np.empty(rows, np.int64), np.empty(rows, np.int64))
        self.last = (np.empty(rows, np.int64), np.empty(rows, np.int64))
        self.step_endings = (np.empty(rows, np.int64), np.empty(rows), np.empty(rows, np.int64))  # one step's
        self.finished = np.empty(n, np.int64)
        # the rows that ended: sentence, score, how many tokens, the tokens
        self.kept = (
            np.empty(rows, np.int64),
            np.empty(rows),
            np.empty(rows, np.int64),
            np.empty((rows, limit + 1), np.int64),
        )
        self._first = 0  # which of each pair the last call wrote first

    def selection(
        self, eos: int, window: int, hist: np.ndarray, scores: np.ndarray, finished: Sequence[int]
    ) -> tuple[object, ...]:
        """common_steps' arguments from `k` on, for the sentences of `scores` [n, k] going on from
        `hist`, with `finished[i]` hypotheses ended of sentence i; the first of each pair written is
        never the memory that `hist` is read from."""
        n = len(scores)
        rows = n * self.k
        self._first = 1 if hist.base is self.hist[0] else 0
        first, second = self._first, 1 - self._first
        self.finished[:n] = finished
        return (
            self.k, eos, window, hist, scores,
            self.hist[first][:rows], self.hist[second][:rows], self.scores[first][:n], self.scores[second][:n],
            self.rows[first][:rows], self.rows[second][:rows], self.last[first][:rows], self.last[second][:rows],
            *(part[:rows] for part in self.step_endings), self.finished[:n],
            *(part[:rows] for part in self.kept), _MAX_REPEATS_BY_N,
        )  # fmt: skip

    def after(self, committed: int, n: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hist, scores, next_rows, last) of n sentences after the last call's `committed` steps (at
        least one), their histories now `length` tokens long."""
        at = self._first if committed % 2 else 1 - self._first  # the first of each pair holds the odd steps
        rows = n * self.k
        return self.hist[at][:rows, :length], self.scores[at][:n], self.rows[at][:rows], self.last[at][:rows]

    def chosen(self, committed: int, status: int, ended: int, n: int, length: int) -> _Chosen | None:
        """The selection of the step run after the last call's `committed` steps and not taken there,
        as _native_common would return it (its histories `length` tokens long before the step)."""
        if status == 0:
            return None
        at = self._first if committed % 2 == 0 else 1 - self._first  # the pair's member that step wrote
        rows = n * self.k
        ended_rows, scores, sentences = (part[:ended].tolist() for part in self.step_endings)
        endings = list(zip(sentences, ended_rows, scores, strict=True))
        hist, last = self.hist[at][:rows, : length + 1], self.last[at][:rows]
        return _Chosen(self.rows[at][:rows], last, self.scores[at][:n], hist, endings, suspect=status == 2)

    def ended(self, kept: int) -> list[tuple[int, float, list[int]]]:
        """The rows that ended in the last call, the first `kept`: (sentence, score, tokens) each, in
        the order they did."""
        sentences, scores, lengths, tokens = (part[:kept] for part in self.kept)
        ends = zip(sentences.tolist(), scores.tolist(), lengths.tolist(), strict=True)
        return [(sentence, score, tokens[i, :length].tolist()) for i, (sentence, score, length) in enumerate(ends)]


class _Grid:
    """What one step's selection reads that depends only on the batch's shape: n sentences of
    `beams` rows, `width` candidates per row. Read-only: a small one serves every search of its shape (_grid)."""

    def __init__(self, n: int, beams: int, width: int) -> None:
        self.by_row = np.arange(n)[:, None]
        self.first_row = self.by_row * beams  # each sentence's first row
        self.beam_index = np.repeat(np.repeat(np.arange(beams), width)[None, :], n, axis=0)  # beam of each candidate
        for array in (self.by_row, self.first_row, self.beam_index):
            array.flags.writeable = False


# Grids of searches of up to this many rows (a sentence alone, small batches) are kept for the
# process, a few kilobytes in all; a larger batch makes its own, once per search.
KEPT_GRID_ROWS = 64
_kept_grid = functools.lru_cache(maxsize=128)(_Grid)


def _grid(grids: dict[tuple[int, int], _Grid], n: int, beams: int, width: int) -> _Grid:
    """The grid of n sentences of `beams` rows, from the search's own `grids` or the process's."""
    grid = grids.get((n, beams))
    if grid is None:
        made = _kept_grid(n, beams, width) if n * beams <= KEPT_GRID_ROWS else _Grid(n, beams, width)
        grid = grids[(n, beams)] = made
    return grid


def _ranked_candidates(
    step_ids: np.ndarray, step_log_probs: np.ndarray, scores: np.ndarray, grid: _Grid, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sentence's `width` best continuations of its rows [n·beams, width] (scores [n, beams]),
    best first: their scores, tokens and the rows they extend, each [n, width]. A candidate among
    the sentence's best is among its own beam's best, so those beams·width are ranked; ties: lower
    id, then lower beam."""
    n, beams = scores.shape
    beam_ids = step_ids.reshape(n, beams * width)
    cand = (scores[:, :, None] + step_log_probs.reshape(n, beams, width)).reshape(n, beams * width)
    top = np.lexsort((grid.beam_index, beam_ids, -cand), axis=1)[:, :width]
    return cand[grid.by_row, top], beam_ids[grid.by_row, top], grid.first_row + top // width


def _head_goes_on(token: np.ndarray, top_scores: np.ndarray, k: int, eos: int) -> bool:
    """Whether no EOS and no impossible score lies among any sentence's K best (the repetition guard aside)."""
    return bool(eos not in token[:, :k] and top_scores[:, :k].min() > -np.inf)


def beam_search(
    model: OnnxModel,
    sources: Sequence[Sequence[int]],
    tags: Sequence[int],
    options: DecodeOptions,
    prefixes: Sequence[Sequence[int]] = (),
    spans: Sequence[tuple[int, int]] = (),
) -> list[list[Hypothesis]]:
    """n_best hypotheses per source (ids ending in EOS), best first. `tags[i]` picks sentence i's language:
    the decoder's first input; `prefixes[i]`, where given, the tokens forced after it (one length for
    the batch), which the hypotheses leave out. With `spans[i]` (start, end) positions of source i,
    each hypothesis carries its alignment: where in that span each token's step attended to most
    (a model whose decoder step has an alignment output; OnnxModel.has_alignment).

    What a large batch's tensors took goes back to the system once the model idles
    (OnnxModel.large_batch_done)."""
    with model.searching(len(sources) * options.beam_size):
        if options.beam_size == 1:
            hypotheses = greedy_search(model, sources, tags, options, prefixes, spans)
        else:
            hypotheses = _beam_search(model, sources, tags, options, prefixes, spans)
    if len(sources) * options.beam_size > LARGE_BATCH_ROWS:
        model.large_batch_done()
    return hypotheses


def _beam_search(
    model: OnnxModel,
    sources: Sequence[Sequence[int]],
    tags: Sequence[int],
    options: DecodeOptions,
    prefixes: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
) -> list[list[Hypothesis]]:
    # A step of one sentence decodes in about a millisecond, and each array operation here costs
    # microseconds whatever its size: so the common case (no ending, no guard hit, no sentence done)
    # takes few of them, and what depends only on the batch's shape is made once (_Grid).
    k = options.beam_size
    mask, cross, limits, min_length, cache, last, vocab, keep_arrays = _start(
        model, sources, tags, options, prefixes, k, bool(spans)
    )
    aligner = _Aligner(spans, mask.shape[1]) if spans else None
    # Step 0 runs one row per sentence (all K beams would start identical); the batch
    # becomes K rows per sentence, row s·K + j for beam j of sentence s, from step 1 on.
    beams = 1
    hist = np.zeros((len(sources), 0), dtype=np.int64)  # generated tokens per row
    aligned = np.zeros((len(sources), 0), dtype=np.int64)  # their source positions (with spans)
    scores = np.zeros((len(sources), 1))
    alive = np.arange(len(sources))
    alive_limits = limits  # limits[alive]
    nearest_limit = int(limits.min())
    finished: list[list[Hypothesis]] = [[] for _ in sources]
    full = np.zeros(len(sources), dtype=bool)  # per alive sentence: k hypotheses have ended
    width = 2 * k
    grids: dict[tuple[int, int], _Grid] = {}
    eos = model.eos_id
    ids_written = False  # the last selection committed its step (_native_common): the next ids are bound
    ahead = None if aligner is not None or native.common_step is None else _Ahead(len(sources), k, int(limits.max()))
    step, steps = 0, int(limits.max())
    while step < steps:
        step_top, ran_chosen, selected = None, None, False  # selected: the C loop's step, its selection made
        # Steps run and taken in C one after another (OnnxModel.common_steps), as the selection below
        # would take them, up to one it would not (its outputs come back as step_top); at K rows a
        # sentence, while no rule of a step's length applies.
        common_steps = nearest_limit - 1 - step
        if (
            ahead is not None
            and beams == k
            and step >= min_length
            and common_steps > 0
            and (options.early_stopping or not full.any())
        ):
            window = LOOP_WINDOW if options.repetition_guard else 0
            selection = ahead.selection(eos, window, hist, scores, [len(finished[i]) for i in alive])
            taken = model.common_steps(cache, common_steps, selection, None if ids_written else last)
            if taken is not None:
                for i, score, tokens in ahead.ended(taken.kept):
                    normalized = score / (len(tokens) + 1) ** options.length_penalty
                    finished[alive[i]].append(Hypothesis(tokens, normalized, score, True))
                if taken.committed:
                    step += taken.committed
                    hist, scores, next_rows, last = ahead.after(taken.committed, len(alive), step)
                    ids_written = True
                step_top = taken.ran
                if step_top is None and taken.committed:
                    continue
                if step_top is not None:  # selected there, as the C selection below would select it
                    ran_chosen = ahead.chosen(taken.committed, taken.status, taken.ended, len(alive), step)
                    selected = True
        # Over the same sources as the last step, run again on its binding (no alignment to return).
        if step_top is None and aligner is None:
            step_top = model.step_again(cache, None if ids_written else last)
        if step_top is None:
            step_top = model.decode_top(last[:, None], mask, cache, cross, aligner is not None, vocab)
        ids_written = False
        peaks = aligner.peaks(step_top.alignment, alive, beams) if aligner is not None else None
        n = len(alive)
        grid = _grid(grids, n, beams, width)
        length = step + 1
        step_ids, step_log_probs = step_top.ids[:, :width], step_top.log_probs[:, :width]
        if options.forced_eos and length >= nearest_limit:  # rows at their limit may only end, on EOS at log-prob 0
            forced = np.repeat(alive_limits <= length, beams)
            step_ids, step_log_probs = step_ids.copy(), step_log_probs.copy()
            step_ids[forced], step_log_probs[forced] = eos, -np.inf
            step_log_probs[forced, 0] = 0.0
        if step < min_length:  # too early to end: EOS is no candidate
            step_log_probs = np.where(step_ids == eos, -np.inf, step_log_probs)
        # The common step (below): no hypothesis ends or is cut, no sentence has ended, and no token
        # among a sentence's K best closes a runaway loop. In C where the module is built.
        may_be_common = length < nearest_limit and (options.early_stopping or not full.any())
        chosen, module = None, native.common_step
        if may_be_common and module is not None:
            chosen = ran_chosen if selected else _native_common(
                module, step_ids, step_log_probs, scores, hist, k, eos, options.repetition_guard, cache
            )  # fmt: skip
        compact, completed = False, 0
        if chosen is not None and chosen.ended:
            # Rows that end here. Where some sentences reach K endings and others go on, or an ending
            # must keep its alignment, the full selection below takes the step instead.
            counts = Counter(sentence for sentence, _, _ in chosen.ended)
            completed = sum(len(finished[alive[i]]) + c >= k for i, c in counts.items())
            if peaks is not None or (completed and (completed < n or not options.early_stopping)):
                chosen = None
        # A token that would go on and closes a runaway loop sends the step to the full selection, unless
        # the search ends here: excluding it only adds endings ranked after these, beyond the K kept.
        if (
            chosen is not None
            and chosen.suspect
            and not completed
            and _runaway_among(hist, chosen.next_rows.reshape(n, k), chosen.last.reshape(n, k))
        ):
            chosen = None
        if chosen is not None:
            for i, row, score in chosen.ended:
                if len(finished[alive[i]]) < k:
                    hyp = Hypothesis(hist[row].tolist(), score / length**options.length_penalty, score, True)
                    finished[alive[i]].append(hyp)
            if completed:  # every sentence has its K endings: the search is done
                break
            next_rows, last, scores, hist = chosen.next_rows, chosen.last, chosen.scores, chosen.hist
            ids_written = chosen.committed
        else:
            # The 2K best (so that K survive even if K end here).
            top_scores, token, rows = _ranked_candidates(step_ids, step_log_probs, scores, grid, width)
            # The common step in numpy: its K best all go on, as the rules below would choose them, in
            # a third of their array operations.
            common = may_be_common and _head_goes_on(token, top_scores, k, eos)
            if common and options.repetition_guard and hist.shape[1]:
                common = not _runaway_among(hist, rows[:, :k], token[:, :k])
            if common:
                next_rows, last, scores = rows[:, :k].ravel(), token[:, :k].ravel(), top_scores[:, :k]
            else:
                valid = top_scores > -np.inf
                if options.repetition_guard and hist.shape[1]:
                    # A token that would close a runaway loop is no continuation: it neither goes on nor
                    # ends a hypothesis cut at the length limit, and takes no place among the K best.
                    valid &= ~_closing_loops(hist, rows, token, valid & (token != eos))
                at_limit = alive_limits <= length if length >= nearest_limit else None
                ending = token == eos
                if at_limit is not None:
                    ending |= at_limit[:, None]
                ending &= valid
                # An ending counts only if it ranks among the K best continuations.
                for i, j in _cells(ending & (np.cumsum(valid, axis=1) <= k)):
                    sent = alive[i]
                    row, ended = rows[i, j], bool(token[i, j] == eos)
                    toks = hist[row].tolist() + ([] if ended else [int(token[i, j])])
                    alignment = () if peaks is None else (*aligned[row].tolist(), *([] if ended else [int(peaks[row])]))
                    score = float(top_scores[i, j])
                    hyp = Hypothesis(toks, score / length**options.length_penalty, score, ended, alignment=alignment)
                    if len(finished[sent]) < k:
                        finished[sent].append(hyp)
                        full[i] = len(finished[sent]) == k
                    elif not options.early_stopping:  # keep the K best endings
                        worst = min(range(k), key=lambda h: finished[sent][h].score)
                        if hyp.score > finished[sent][worst].score:
                            finished[sent][worst] = hyp
                going = valid & ~ending  # may go on: the first K of each sentence that do are taken below
                ends = full
                if not options.early_stopping and full.any():
                    # Ends only when the best running beam, normalised at this length, cannot beat the worst ending.
                    best_going = np.where(going, top_scores, -np.inf).max(axis=1) / length**options.length_penalty
                    worst_kept = np.array(
                        [min(h.score for h in finished[s]) if f else np.inf for s, f in zip(alive, full, strict=True)]
                    )
                    ends = full & (best_going <= worst_kept)
                done = ~going.any(axis=1)
                done |= ends
                if at_limit is not None:
                    done |= at_limit
                if done.any():
                    keep = np.flatnonzero(~done)
                    if not len(keep):
                        break
                    compact = _compact(n - len(keep), n)
                    if compact:
                        keep = compaction_order(keep)
                        going, rows, token, top_scores = going[keep], rows[keep], token[keep], top_scores[keep]
                    else:  # finished ones ride along, never extended
                        going[done] = False
                if going[:, :k].all():  # the K best all go on
                    next_rows, last, scores = rows[:, :k].ravel(), token[:, :k].ravel(), top_scores[:, :k]
                else:
                    order = np.argsort(~going, axis=1, kind="stable")[:, :k]  # chosen first, in rank order
                    by_row = np.arange(len(order))[:, None]
                    next_rows, last = rows[by_row, order].ravel(), token[by_row, order].ravel()
                    scores = np.where(going[by_row, order], top_scores[by_row, order], -np.inf)
            hist = np.concatenate((hist[next_rows], last[:, None]), axis=1)
        if peaks is not None:
            aligned = np.concatenate((aligned[next_rows], peaks[next_rows][:, None]), axis=1)
        beams = k  # after step 0: K rows per sentence, over the sentence's one copy of cross K/V
        if compact:  # drop finished sentences from the running batch
            cache.reorder(next_rows, keep)
            cross, mask, alive, full = compact_rows(cross, keep), mask[keep], alive[keep], full[keep]
            vocab = None if vocab is None else vocab.kept(keep)
            alive_limits = limits[alive]
            nearest_limit = int(alive_limits.min())
        elif not ids_written:
            cache.reorder(next_rows)  # each row reads the history of the beam it continues
        step += 1
    keep_arrays()
    return [_ranked(f, source, options.n_best, options, eos) for f, source in zip(finished, sources, strict=True)]
