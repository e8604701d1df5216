"""Which int8 products the distance from fp32 comes from: `python bench/precision_sensitivity.py
--work W [--checkpoint artifacts/default] [--groups proj cross_kv ...] [--split val] [--sentences 400]
[--as fp32|constant] [--together]`.

Exports the checkpoint at fp32 and at int8 as `mtserve export --quantize int8` does, then once
more per group of MatMuls (one role in every layer: the encoder's fused QKV, the decoder's FFN's
first product, the output projection, ...) with that group left in fp32 and every other product
int8. bench/forced_distance.py then scores each export against fp32 on the references, and the
table gives each group's distance and how much of int8's it removes. A group whose share is large
is where a finer quantization would pay; shares spread evenly leave no cheap lever.

`--as constant` turns the question around: each group in turn takes the constant scale of its
calibrated range (`--activation-scales calibrated`, a product of four nodes fewer) while every
other product keeps its rows' own scales, so the table gives what each group's constant scale adds
to the distance. `--together` adds one more export with every group given at once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import export.quantize as quantize  # noqa: E402
from service.cli import main as mtserve  # noqa: E402

# Weight names of export/network.py's graphs, by role; every layer's weight of a role is one group.
GROUPS = {
    "enc_qkv": r"^encoder\.\d+\.self_attn\.qkv\.",
    "enc_out": r"^encoder\.\d+\.self_attn\.out_proj\.",
    "enc_ffn0": r"^encoder\.\d+\.ffn\.0\.",
    "enc_ffn2": r"^encoder\.\d+\.ffn\.2\.",
    "cross_kv": r"^cross_kv\.",
    "dec_qkv": r"^decoder\.\d+\.self_attn\.qkv\.",
    "dec_out": r"^decoder\.\d+\.self_attn\.out_proj\.",
    "cross_q": r"^decoder\.\d+\.cross_attn\.q_proj\.",
    "cross_out": r"^decoder\.\d+\.cross_attn\.out_proj\.",
    "dec_ffn0": r"^decoder\.\d+\.ffn\.0\.",
    "dec_ffn2": r"^decoder\.\d+\.ffn\.2\.",
    "proj": r"^model\.embed\.weight",  # the output projection (and the MLM head, which reads it)
}


def export(checkpoint: Path, out: Path, int8: bool, keep: str | None = None, constant: str | None = None) -> None:
    """`mtserve export` of `checkpoint` to `out`; with `keep`, the MatMuls whose weight matches it stay
    fp32; with `constant`, the activations of those whose weight matches it take constant scales."""
    original: Callable[..., bool] = quantize._is_constant_matrix
    original_init = quantize._RowQuantizer.__init__

    def quantized_unless_kept(node: Any, weights: Any) -> bool:
        return original(node, weights) and not (keep and re.search(keep, node.input[1]))

    def constant_only_where_asked(self: Any, graph: Any, ranges: Any, *rest: Any) -> None:
        weights = {i.name: i for i in graph.initializer}
        chosen = {n.input[0] for n in graph.node
                  if original(n, weights) and constant and re.search(constant, n.input[1])}  # fmt: skip
        original_init(self, graph, {name: value for name, value in ranges.items() if name in chosen}, *rest)

    quantize._is_constant_matrix = quantized_unless_kept
    quantize._RowQuantizer.__init__ = constant_only_where_asked  # type: ignore[method-assign,assignment]
    scales = ["--activation-scales", "calibrated"] if constant else []
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the export's report: it is in `out`
            code = mtserve(
                ["export", "--checkpoint", str(checkpoint), "--out", str(out), *(["--quantize", "int8"] * int8),
                 *scales]
            )  # fmt: skip
    finally:
        quantize._is_constant_matrix = original
        quantize._RowQuantizer.__init__ = original_init  # type: ignore[method-assign]
    if code != 0:
        raise SystemExit(f"export to {out} failed ({code})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="directory for the exports")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=list(GROUPS))
    parser.add_argument("--split", default="val")
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--as", dest="mode", choices=["fp32", "constant"], default="fp32",
                        help="each group in turn left in fp32, or at constant activation scales")  # fmt: skip
    parser.add_argument("--together", action="store_true", help="one more export with all the groups at once")
    args = parser.parse_args()
    # name in the table -> (export directory, the weights whose products are left in fp32 or at constant scales)
    variants = {f"{group} {args.mode}": (args.work / f"{args.mode}-{group}", GROUPS[group]) for group in args.groups}
    if args.together:
        together = "|".join(GROUPS[group] for group in args.groups)
        variants[f"{' + '.join(args.groups)} {args.mode}"] = (args.work / f"{args.mode}-together", together)
    models = {"fp32": args.work / "fp32", "int8": args.work / "int8"}
    models |= {name: out for name, (out, _) in variants.items()}
    export(args.checkpoint, models["fp32"], int8=False)
    export(args.checkpoint, models["int8"], int8=True)
    for out, pattern in variants.values():
        if args.mode == "fp32":
            export(args.checkpoint, out, int8=True, keep=pattern)
        else:
            export(args.checkpoint, out, int8=True, constant=pattern)
    command = [sys.executable, str(ROOT / "bench" / "forced_distance.py"), "--split", args.split]
    command += ["--sentences", str(args.sentences), "--model", *map(str, models.values())]
    rows = [
        json.loads(line)
        for line in subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()
    ]
    names = {str(path): name for name, path in models.items()}
    distance = {(names[row["model"]], row["direction"]): row["mean_abs_log_prob_diff"] for row in rows}
    directions = list(dict.fromkeys(row["direction"] for row in rows))
    what = "left in fp32" if args.mode == "fp32" else "at constant scales"
    print(f"| {what} ({args.split}, {rows[0]['sentences']} sentences) | " + " | ".join(directions) + " |")
    print("|---" * (len(directions) + 1) + "|")
    for name in list(models)[1:]:
        cells = []
        for direction in directions:
            value, whole = distance[(name, direction)], distance[("int8", direction)]
            cells.append(f"{value:.5f}" + ("" if name == "int8" else f" ({(value / whole - 1) * 100:+.0f}%)"))
        print(f"| {'nothing (int8)' if name == 'int8' else name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
