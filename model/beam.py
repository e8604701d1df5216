"""Batched beam search in PyTorch: the reference decoder for evaluation and parity tests.

Batch and beam are flattened into one axis of size B·K. Scores follow
CTranslate2: Σ log p / length^α, where the length counts EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.transformer import KV, Transformer
from service.conventions import max_target_length


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without the language tag and without EOS
    score: float  # length-normalised log-probability
    log_prob: float  # Σ log p, EOS included


def _select(cache: list[KV], rows: Tensor) -> list[KV]:
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]


@torch.no_grad()
def beam_search(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    tag: int,
    beam_size: int = 5,
    length_penalty: float = 1.0,
    n_best: int = 1,
    prefix: Sequence[int] = (),
) -> list[list[Hypothesis]]:
    """Translate each source (ids ending in EOS) into `n_best` hypotheses, best first; the decoder
    starts from `tag`, then `prefix` forced, unscored and left out of the hypotheses."""
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must lie in 1..beam_size ({beam_size}), got {n_best}")
    batch, k = len(sources), beam_size
    eos, pad = model.cfg.eos_id, model.cfg.pad_id
    src = torch.full((batch, max(len(s) for s in sources)), pad, dtype=torch.long)
    src_mask = torch.zeros(src.shape, dtype=torch.bool)
    for i, s in enumerate(sources):
        src[i, : len(s)] = torch.as_tensor(s)
        src_mask[i, : len(s)] = True
    limits = torch.tensor([max(1, max_target_length(len(s)) - len(prefix)) for s in sources])  # the prefix counts
    memory = model.encode(src, src_mask)  # [B, S, D]
    flat = torch.arange(batch).repeat_interleave(k)  # row b·K + j belongs to sentence b
    cross = _select(model.cross_kv(memory), flat)
    src_mask = src_mask[flat]
    past: list[KV] | None = None
    tokens = torch.full((batch * k, 1), tag, dtype=torch.long)  # [B·K, t+1], starts with the tag
    for forced in prefix:
        _, past = model.decode_step(tokens[:, -1:], src_mask, cross, past)
        tokens = torch.cat((tokens, torch.full((batch * k, 1), forced, dtype=torch.long)), dim=1)
    first = tokens.size(1)  # where the generated tokens begin
    scores = torch.full((batch, k), float("-inf"))
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    alive = torch.arange(batch)  # original sentence index of each running sentence
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for step in range(int(limits.max())):
        logits, past = model.decode_step(tokens[:, -1:], src_mask, cross, past)
        log_probs = logits[:, -1].float().log_softmax(-1)  # [n·K, V]
        log_probs[:, list(model.cfg.never_generate)] = float("-inf")
        vocab = log_probs.size(-1)
        n = alive.numel()
        cand = (scores.view(n, k, 1) + log_probs.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=-1)  # 2K so that K survive even if K end here
        origin, token = top_idx // vocab, top_idx % vocab
        length = step + 1  # generated tokens, EOS included
        at_limit = limits[alive] <= length
        next_rows, next_tokens, next_scores = [], [], []
        keep = []
        for i in range(n):
            sent = int(alive[i])
            chosen: list[tuple[int, int, float]] = []
            ranked = zip(top_scores[i].tolist(), origin[i].tolist(), token[i].tolist(), strict=True)
            for rank, (score, o, t) in enumerate(ranked):
                if score == float("-inf"):
                    break
                if t == eos or at_limit[i]:
                    # An ending counts only if it ranks among the K best continuations.
                    if rank < k and len(finished[sent]) < k:
                        hyp_tokens = tokens[i * k + o, first:].tolist() + ([] if t == eos else [t])
                        finished[sent].append(Hypothesis(hyp_tokens, score / length**length_penalty, score))
                else:
                    chosen.append((o, t, score))
                    if len(chosen) == k:
                        break
            if len(finished[sent]) >= k or at_limit[i] or not chosen:
                continue
            keep.append(i)
            for o, t, score in chosen:
                next_rows.append(i * k + o)
                next_tokens.append(t)
                next_scores.append(score)
            for _ in range(k - len(chosen)):  # pad with dead beams
                next_rows.append(i * k)
                next_tokens.append(pad)
                next_scores.append(float("-inf"))
        if not keep:
            break
        rows = torch.tensor(next_rows)
        tokens = torch.cat((tokens[rows], torch.tensor(next_tokens)[:, None]), dim=1)
        scores = torch.tensor(next_scores).view(len(keep), k)
        past = _select(past, rows)
        if len(keep) < n:  # drop finished sentences from the running batch
            kept_rows = (torch.tensor(keep)[:, None] * k + torch.arange(k)).flatten()
            cross, src_mask = _select(cross, kept_rows), src_mask[kept_rows]
            alive = alive[torch.tensor(keep)]

    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]
