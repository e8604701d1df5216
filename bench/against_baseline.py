"""This checkout's runtime against another checkout's (the code before a change), interleaved.

    git worktree add /tmp/baseline HEAD~1
    python bench/against_baseline.py --baseline /tmp/baseline --model artifacts/default

Each round runs each checkout in a fresh process of its own, one after the other: throughput on
the first `--limit` test2016 sentences in the runtime's own batches at each beam, then one
sentence at a time (the first 40, beam 5) for latency. The summary gives each checkout's median
over the rounds and the median of the per-round ratios (this checkout over the baseline). Both
load the same model directory, unless `--baseline-model` names the one the baseline loads (the
same model in the form that code reads, where a change alters the graphs); each makes or finds
its graphs' packed copies under its own directory before it is timed (what a server does once per
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(args: argparse.Namespace) -> None:
    """In this process, on the code in sys.path[0]: load, warm up, time, print one JSON row."""
    sys.path.insert(0, str(Path(args.code).resolve()))
    from bench.common import test_pairs
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator

    started = time.perf_counter()
    translator = Translator.load(Path(args.model), args.threads)
    load_s = time.perf_counter() - started
    target = translator.languages.directions[0][1]  # from English in every model measured here
    texts, _ = test_pairs(args.data_dir)
    row: dict[str, object] = {"code": args.label, "load_s": round(load_s, 2)}
    translator.translate(texts[:8], target)  # warm-up
    for beam in args.beam_size:
        options = DecodeOptions(beam_size=beam)
        begun = time.perf_counter()
        out = translator.translate(texts[: args.limit], target, options)
        seconds = time.perf_counter() - begun
        tokens = sum(t[0].target_tokens for t in out)
        row[f"beam{beam}_tok_per_s"] = round(tokens / seconds, 1)
    latencies = []
    for text in texts[:40]:
        begun = time.perf_counter()
        translator.translate([text], target, DecodeOptions(beam_size=5))
        latencies.append((time.perf_counter() - begun) * 1000)
    row["one_sentence_p50_ms"] = round(statistics.median(latencies), 2)
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with (required)")
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--baseline-model", type=Path, help="the model directory the baseline loads (default: --model)")
    parser.add_argument("--beam-size", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=300, help="first N test2016 sentences")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir")
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code:
        measure(args)
        return
    if args.baseline is None:
        parser.error("--baseline is required")
    baseline_model = args.baseline_model or args.model
    packed = {label: tempfile.mkdtemp(prefix=f"mtserve-packed-{label}-") for label in ("this", "baseline")}
    rows: list[dict[str, float | str]] = []
    for _ in range(args.rounds):
        for label, code, model in (("this", ROOT, args.model), ("baseline", args.baseline, baseline_model)):
            command = [sys.executable, __file__, "--code", str(code), "--label", label, "--model", str(model),
                       "--threads", str(args.threads), "--limit", str(args.limit),
                       "--beam-size", *map(str, args.beam_size),
                       *(["--data-dir", args.data_dir] if args.data_dir else [])]  # fmt: skip
            env = os.environ | {"MTSERVE_PACKED_DIR": packed[label]}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(output.strip().splitlines()[-1], flush=True)
    keys = [k for k in rows[0] if k != "code"]
    for key in keys:
        ours = [float(r[key]) for r in rows if r["code"] == "this"]
        theirs = [float(r[key]) for r in rows if r["code"] == "baseline"]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
        summary = {"measure": key, "this_median": round(statistics.median(ours), 2),
                   "baseline_median": round(statistics.median(theirs), 2),
                   "median_ratio": round(statistics.median(ratios), 3),
                   "ratios": [round(r, 3) for r in ratios]}  # fmt: skip
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
