"""The loss-curve PNG written beside the training log."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVES = {
    "mt_loss": "translation (train, smoothed)",
    "mlm_loss": "masked LM (train)",
    "nsp_loss": "next sentence (train)",
    "val_mt_nll": "translation NLL (Multi30k val)",
}


def plot_loss_curve(log_csv: Path, out_png: Path) -> None:
    with open(log_csv) as handle:
        rows = list(csv.DictReader(handle))
    fig, ax = plt.subplots(figsize=(7, 4))
    for column, label in CURVES.items():
        points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if column == "val_mt_nll" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
