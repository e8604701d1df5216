"""Interleaved rounds of several engines and their medians: what the engine benchmarks report.

Each round runs every engine once on the same batches, one after the other (A B A B ...), so
a few seconds of load on a shared machine fall on one round of one engine, not on a whole
engine. The summary gives each engine's median target tokens/s with the min and max over the
rounds, and the median over rounds of its per-round speed ratio against CTranslate2 at the same
precision and beam (its tokens/s over CTranslate2's in that round).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

REFERENCE_ENGINE = "ctranslate2"


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (engine, precision, beam) over rows with `round` and `tok_per_s`."""
    groups: dict[tuple[str, str, int], dict[int, float]] = {}
    for row in rows:
        key = (row["engine"], row["precision"], row["beam"])
        groups.setdefault(key, {})[row["round"]] = float(row["tok_per_s"])
    out = []
    for (engine, precision, beam), by_round in groups.items():
        speeds = list(by_round.values())
        summary: dict[str, Any] = {
            "summary": engine, "precision": precision, "beam": beam, "rounds": len(speeds),
            "median_tok_per_s": round(statistics.median(speeds), 1),
            "min_tok_per_s": round(min(speeds), 1), "max_tok_per_s": round(max(speeds), 1),
        }  # fmt: skip
        reference = groups.get((REFERENCE_ENGINE, precision, beam))
        if reference and engine != REFERENCE_ENGINE:
            ratios = [speed / reference[r] for r, speed in by_round.items() if r in reference]
            summary["median_ratio_vs_ctranslate2"] = round(statistics.median(ratios), 3)
            summary["ratios_per_round"] = [round(r, 3) for r in ratios]
        out.append(summary)
    return out
