"""Bar chart of `bench/engines.py` output: `python bench/plot.py results.jsonl docs/benchmarks.png`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(rows: list[dict[str, object]], out: Path) -> None:
    beams = sorted({int(str(r["beam"])) for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(beams), figsize=(6 * len(beams), 4))
    for ax, beam in zip(axes if len(beams) > 1 else [axes], beams, strict=True):
        subset = [r for r in rows if r["beam"] == beam]
        labels = [f"{str(r['engine']).replace('-', chr(10))}\n{r['precision']}" for r in subset]
        values = [float(str(r["tok_per_s"])) for r in subset]
        bars = ax.bar(
            range(len(values)), values, color=["#4c72b0" if "mtserve" in lbl else "#999999" for lbl in labels]
        )
        ax.bar_label(
            bars, labels=[f"{v:.0f}\nBLEU {r['bleu']}" for v, r in zip(values, subset, strict=True)], fontsize=7
        )
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_ylabel("target tokens/s")
        ax.set_title(f"test2016 en→fr, 1,000 sentences, beam {beam}, 2 threads")
        ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    plot([json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()], Path(sys.argv[2]))
