"""Hypotheses that ran away: cut at the length limit, out of proportion to their source, or looping.

The proportion is measured on human translations (bench/length_ratio.py): over Multi30k
test2016 and val, the Tatoeba test split and newstest2013, in both directions, 99.9% of
reference translations keep T ≤ 2.46·S + 4 and T ≥ 0.37·S − 1 (S source tokens, T target
tokens, the default model's pieces). The bounds below sit just outside those.

A sane hypothesis goes before any degenerate one, whatever their scores. A source that gets
only degenerate hypotheses still gets an answer: the best one, cut at its first repeated
3-gram where it loops or ran to the length limit, and at the bound, with quality "low" and its score lowered by
LOW_QUALITY_PENALTY, so that it is never a loop up to the length limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

Quality = Literal["ok", "low"]  # low: every hypothesis of the source was degenerate

if TYPE_CHECKING:
    from service.runtime.beam import Hypothesis

LONG_SLOPE, LONG_OFFSET = 2.5, 4.0
SHORT_SLOPE, SHORT_OFFSET, SHORT_FROM = 0.35, 1.0, 10  # a short source may be a title: no lower bound
LOOP_N = 3  # a repeated token 3-gram ...
LOOP_MIN_TOKENS = 12  # ... in a hypothesis of at least this many tokens ...
LOOP_SHARE = 0.25  # ... where over this share of its 3-grams are repeats, is a loop
LOW_QUALITY_PENALTY = 5.0


def _repeated_share(tokens: Sequence[int]) -> float:
    grams = [tuple(tokens[i : i + LOOP_N]) for i in range(len(tokens) - LOOP_N + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _loops(tokens: Sequence[int], source_share: float) -> bool:
    if len(tokens) < LOOP_MIN_TOKENS:
        return False
    return _repeated_share(tokens) > max(LOOP_SHARE, source_share + LOOP_SHARE)


def looping(tokens: Sequence[int], source: Sequence[int]) -> bool:
    """Many repeated 3-grams, where the source itself does not repeat so."""
    return _loops(tokens, _repeated_share(source))


def max_sane_length(source_tokens: int) -> int:
    return int(LONG_SLOPE * source_tokens + LONG_OFFSET)


def out_of_proportion(target_tokens: int, source_tokens: int) -> bool:
    too_long = target_tokens > max_sane_length(source_tokens)
    too_short = source_tokens >= SHORT_FROM and target_tokens < SHORT_SLOPE * source_tokens - SHORT_OFFSET
    return too_long or too_short


def _degenerate(hyp: Hypothesis, source_tokens: int, source_share: float) -> bool:
    return not hyp.ended or out_of_proportion(len(hyp.tokens), source_tokens) or _loops(hyp.tokens, source_share)


def degenerate(hyp: Hypothesis, source: Sequence[int]) -> bool:
    """`source` without its EOS."""
    return _degenerate(hyp, len(source), _repeated_share(source))


def _repair(hyp: Hypothesis, source_tokens: int, source_share: float) -> Hypothesis:
    """Cut at the first repeated 3-gram (of a loop, or of one cut at the length limit) and at
    the sane length; quality low, score lowered."""
    tokens = list(hyp.tokens)
    if not hyp.ended or _loops(tokens, source_share):
        seen: set[tuple[int, ...]] = set()
        for i in range(len(tokens) - LOOP_N + 1):
            gram = tuple(tokens[i : i + LOOP_N])
            if gram in seen:
                tokens = tokens[:i]
                break
            seen.add(gram)
    tokens = tokens[: max_sane_length(source_tokens)]
    alignment = hyp.alignment[: len(tokens)]
    return replace(hyp, tokens=tokens, score=hyp.score - LOW_QUALITY_PENALTY, quality="low", alignment=alignment)


def mark_degenerate(hyps: Sequence[Hypothesis], source: Sequence[int]) -> list[Hypothesis]:
    """The hypotheses as they are, in their order, with quality "low" on each degenerate one (for a
    model served without the cut: its own output, flagged)."""
    body = source[:-1]
    share = _repeated_share(body)
    return [replace(h, quality="low") if _degenerate(h, len(body), share) else h for h in hyps]


def sane_first(hyps: Sequence[Hypothesis], source: Sequence[int], n_best: int) -> list[Hypothesis]:
    """The n_best to return, best first: sane ones by score, then degenerate ones; all
    degenerate: the repaired best, marked low."""
    body = source[:-1]  # without EOS
    share = _repeated_share(body)
    sane: list[Hypothesis] = []
    bad: list[Hypothesis] = []
    for hyp in sorted(hyps, key=lambda h: -h.score):
        (bad if _degenerate(hyp, len(body), share) else sane).append(hyp)
        if len(sane) == n_best:  # the rest would rank after these
            return sane
    if not sane:
        return [_repair(h, len(body), share) for h in bad[:n_best]]
    return (sane + bad)[:n_best]
