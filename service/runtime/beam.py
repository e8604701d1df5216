"""Batched beam search in numpy over the ONNX decoder step.

- batch x beam flattened into one row axis of size n·K;
- score = Σ log p / length^α, where the length counts EOS (CTranslate2's convention);
- a hypothesis ends on EOS among the K best continuations; a sentence ends when K have;
- keys and values are reordered by beam origin each step; finished sentences leave the batch;
- ties are broken by the lower token id, so a sentence decodes the same alone or in any batch;
- a repetition guard stops runaway loops of the same 1- to 4-gram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.conventions import EOS_ID, PAD_ID, max_target_length
from service.runtime.sessions import KVList, OnnxModel

# A token may not extend a run of the same n-gram beyond this many repeats (n = index).
MAX_REPEATS = {1: 4, 2: 3, 3: 3, 4: 3}


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without the language tag and EOS
    score: float  # length-normalised
    log_prob: float  # Σ log p, EOS included


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 1.0
    max_length: int = 0  # 0: the shared rule, max_target_length(source tokens)
    repetition_guard: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must lie in 1..beam_size ({self.beam_size}), got {self.n_best}")
        if self.max_length < 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}")

    def limit(self, source_tokens: int) -> int:
        rule = max_target_length(source_tokens)
        return min(rule, self.max_length) if self.max_length else rule


def runaway(tokens: Sequence[int], nxt: int) -> bool:
    """Would appending `nxt` repeat some n-gram (n ≤ 4) back to back more than MAX_REPEATS[n] times?"""
    seq = [*tokens, nxt]
    for n, limit in MAX_REPEATS.items():
        span = n * (limit + 1)
        if len(seq) >= span:
            tail = seq[-span:]
            if all(tail[i] == tail[i % n] for i in range(span)):
                return True
    return False


def _pad_sources(sources: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(sources), max(len(s) for s in sources)), PAD_ID, dtype=np.int64)
    for i, s in enumerate(sources):
        ids[i, : len(s)] = s
    return ids, (ids != PAD_ID).astype(np.int64)


def _take(arrays: KVList, rows: np.ndarray) -> KVList:
    return [a[rows] for a in arrays]


def _top_candidates(cand: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` best entries per row, best first, ties to the lower index."""
    part = np.argpartition(-cand, count - 1, axis=1)[:, :count]
    part.sort(axis=1)  # lower index first, so the stable sort below breaks ties by index
    order = np.argsort(-np.take_along_axis(cand, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def greedy_search(
    model: OnnxModel, sources: Sequence[Sequence[int]], tags: Sequence[int], options: DecodeOptions
) -> list[list[Hypothesis]]:
    """The beam-1 fast path: argmax per step, no beam bookkeeping."""
    ids, mask = _pad_sources(sources)
    enc = model.encode(ids, mask)
    cross, past = enc.cross, model.empty_past(len(sources))
    limits = np.array([options.limit(len(s)) for s in sources])
    alive = np.arange(len(sources))
    last = np.asarray(tags, dtype=np.int64)
    tokens: list[list[int]] = [[] for _ in sources]
    log_prob = np.zeros(len(sources))
    results: list[list[Hypothesis]] = [[] for _ in sources]
    for step in range(int(limits.max())):
        log_probs, past = model.decode_step(last[:, None], mask, past, cross)
        best = log_probs.argmax(axis=1)  # first maximum: ties go to the lower id
        length = step + 1
        keep = []
        for row, sent in enumerate(alive):
            token = int(best[row])
            if token != EOS_ID and options.repetition_guard and runaway(tokens[sent], token):
                token = EOS_ID  # stop a runaway loop here
            log_prob[sent] += float(log_probs[row, token])
            done = token == EOS_ID or length >= limits[sent]
            if token != EOS_ID:
                tokens[sent].append(token)
            if done:
                score = log_prob[sent] / length**options.length_penalty
                results[sent] = [Hypothesis(tokens[sent], float(score), float(log_prob[sent]))]
            else:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(alive):
            rows = np.asarray(keep)
            alive, mask, past, cross = alive[rows], mask[rows], _take(past, rows), _take(cross, rows)
        last = np.asarray([tokens[s][-1] for s in alive], dtype=np.int64)
    return results


def beam_search(
    model: OnnxModel, sources: Sequence[Sequence[int]], tags: Sequence[int], options: DecodeOptions
) -> list[list[Hypothesis]]:
    """n_best hypotheses per source (ids ending in EOS), best first. `tags[i]` picks sentence i's language."""
    if options.beam_size == 1:
        return greedy_search(model, sources, tags, options)
    k = options.beam_size
    ids, mask = _pad_sources(sources)
    enc = model.encode(ids, mask)
    flat = np.repeat(np.arange(len(sources)), k)  # row s·K + j belongs to sentence s
    cross, mask = _take(enc.cross, flat), mask[flat]
    past = model.empty_past(len(flat))
    limits = np.array([options.limit(len(s)) for s in sources])
    last = np.asarray(tags, dtype=np.int64)[flat]
    hyps: list[list[int]] = [[] for _ in flat]  # tokens per row
    scores = np.full((len(sources), k), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    alive = np.arange(len(sources))
    finished: list[list[Hypothesis]] = [[] for _ in sources]

    for step in range(int(limits.max())):
        log_probs, past = model.decode_step(last[:, None], mask, past, cross)
        n, vocab = len(alive), log_probs.shape[1]
        cand = (scores[:, :, None] + log_probs.reshape(n, k, vocab)).reshape(n, k * vocab)
        top = _top_candidates(cand, 2 * k)  # 2K so that K survive even if K end here
        length = step + 1
        rows, next_tokens, next_scores, keep = [], [], [], []
        for i, sent in enumerate(alive):
            chosen: list[tuple[int, int, float]] = []
            at_limit = length >= limits[sent]
            for rank, flat_idx in enumerate(top[i]):
                score = float(cand[i, flat_idx])
                if score == -np.inf:
                    break
                origin, token = divmod(int(flat_idx), vocab)
                row = i * k + origin
                if token == EOS_ID or at_limit:
                    # An ending counts only if it ranks among the K best continuations.
                    if rank < k and len(finished[sent]) < k:
                        toks = hyps[row] + ([] if token == EOS_ID else [token])
                        finished[sent].append(Hypothesis(toks, score / length**options.length_penalty, score))
                elif options.repetition_guard and runaway(hyps[row], token):
                    continue
                else:
                    chosen.append((row, token, score))
                    if len(chosen) == k:
                        break
            if len(finished[sent]) >= k or at_limit or not chosen:
                continue
            keep.append(i)
            chosen += [(i * k, PAD_ID, -np.inf)] * (k - len(chosen))  # dead beams fill the row
            for row, token, score in chosen:
                rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if not keep:
            break
        origin_rows = np.asarray(rows)
        past = _take(past, origin_rows)  # K/V follow their beam of origin
        hyps = [[*hyps[r], t] for r, t in zip(rows, next_tokens, strict=True)]
        scores = np.asarray(next_scores).reshape(len(keep), k)
        last = np.asarray(next_tokens, dtype=np.int64)
        if len(keep) < n:  # drop finished sentences from the running batch
            kept = np.asarray(keep)
            kept_rows = (kept[:, None] * k + np.arange(k)).reshape(-1)
            cross, mask, alive = _take(cross, kept_rows), mask[kept_rows], alive[kept]

    # A sentence that never finished K hypotheses (all beams pruned by the guard) still answers.
    return [sorted(f, key=lambda h: -h.score)[: options.n_best] for f in finished]
