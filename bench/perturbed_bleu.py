"""How far BLEU moves for any change of int8's size, not int8's alone: `python bench/perturbed_bleu.py
--work W [--checkpoint artifacts/default] [--shares 1 0.5 0.25] [--seeds 3] [--split test2016]
[--sentences 1000]`.

Writes copies of the checkpoint whose encoder and decoder weights each move by uniform noise of at
most `share`/2 of their int8 step (one 7-bit step per output column, as export/quantize.py rounds
them; at share 1 as far as rounding to the nearest code moves them, but at random and with no
activation quantized), exports each at fp32, and exports the checkpoint at fp32 and at int8 as
`mtserve export` does. bench/forced_distance.py (on val: where choices are made) and
bench/precision_bleu.py (on `--split`) score each against fp32. The table gives, per model and
direction, the distance from fp32 and BLEU minus fp32's. Where fp32 copies as close to fp32 as the
int8 graphs, or closer, lose as much BLEU, the loss is the checkpoint's luck on that split, not
something a finer int8 grid would win back.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export.quantize import WEIGHT_MAX  # noqa: E402
from model.artifacts import load_model_dir, write_model_dir  # noqa: E402
from service.cli import main as mtserve  # noqa: E402
from service.conventions import TOKENIZER_FILE  # noqa: E402

TRAINING_FILES = ("train_config.json",)  # what `mtserve export` reads besides the model: the splits


def perturbed_copy(checkpoint: Path, out: Path, share: float, seed: int) -> None:
    """`checkpoint` with each encoder and decoder Linear weight moved by U(−share/2, share/2) of its
    column's int8 step, written to `out` as a model directory `mtserve export` takes."""
    model, _ = load_model_dir(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[0] in ("encoder", "decoder"):
            weight = state[f"{name}.weight"]  # [out, in]: one step per output, a column of the graphs' [in, out]
            step = weight.abs().amax(dim=1, keepdim=True) / WEIGHT_MAX
            noise = torch.rand(weight.shape, generator=generator) - 0.5  # within ±1/2
            state[f"{name}.weight"] = weight + noise * step * share
    write_model_dir(out, model.cfg, state, checkpoint / TOKENIZER_FILE)
    for name in TRAINING_FILES:
        shutil.copyfile(checkpoint / name, out / name)


def export(checkpoint: Path, out: Path, int8: bool) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the export's report: it is in `out`
        code = mtserve(["export", "--checkpoint", str(checkpoint), "--out", str(out), *(["--quantize", "int8"] * int8)])
    if code != 0:
        raise SystemExit(f"export to {out} failed ({code})")


def scored(script: str, models: list[Path], *flags: str) -> list[dict[str, Any]]:
    command = [sys.executable, str(ROOT / "bench" / script), *flags, "--model", *map(str, models)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in output.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="directory for the copies and exports")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="noise in int8 steps")
    parser.add_argument("--seeds", type=int, default=3, help="copies per share")
    parser.add_argument("--split", default="test2016", help="held-out split BLEU is taken on")
    parser.add_argument("--sentences", type=int, default=1000)
    args = parser.parse_args()
    models = {"fp32": args.work / "fp32", "int8": args.work / "int8"}
    export(args.checkpoint, models["fp32"], int8=False)
    export(args.checkpoint, models["int8"], int8=True)
    for share in args.shares:
        for seed in range(1, args.seeds + 1):
            name = f"fp32, noise {share:g} step, seed {seed}"
            copy = args.work / f"noise-{share:g}-{seed}"
            perturbed_copy(args.checkpoint, copy / "checkpoint", share, seed)
            export(copy / "checkpoint", copy / "fp32", int8=False)
            models[name] = copy / "fp32"
    exported = list(models.values())
    names = {str(path): name for name, path in models.items()}
    distance = {(names[r["model"]], r["direction"]): float(r["mean_abs_log_prob_diff"])
                for r in scored("forced_distance.py", exported, "--split", "val")}  # fmt: skip
    on_split = scored("precision_bleu.py", exported, "--split", args.split, "--sentences", str(args.sentences))
    bleu = {(names[r["model"]], r["direction"]): (float(r["bleu"]), float(r["same_as_first"])) for r in on_split}
    directions = list(dict.fromkeys(direction for _, direction in bleu))
    header = " | ".join(f"{d}: distance (val), BLEU − fp32 ({args.split}), fp32's own" for d in directions)
    print(f"| model | {header} |")
    print("|---" * (len(directions) + 1) + "|")
    for name in models:
        cells = []
        for direction in directions:
            score, same = bleu[(name, direction)]
            change = score - bleu[("fp32", direction)][0]
            cells.append(f"{distance[(name, direction)]:.5f}, {change:+.2f}, {same * 100:.1f}%")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
