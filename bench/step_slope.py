"""What a decoder step costs each engine, whole: this runtime against CTranslate2 at forced lengths.

    python bench/step_slope.py [--model artifacts/default] [--work runs/one-sentence]
                               [--lengths 12 20 28 36] [--rounds 2] [--shortlist 1024]

CTranslate2's wheels have no profiler, so its run is taken apart from outside: each of the first 40
test2016 sentences is translated alone at beam 5 with its output held at exactly L tokens (no
hypothesis may end before L, every one is cut at L: `min_length`/`max_length` here,
`min_decoding_length`/`max_decoding_length` there), for several L. The time then grows by one
step's cost per token: the slope of the median time against L is a step whole (kernels, the beam
search's host work, the cache's bookkeeping), the intercept what a sentence costs besides its
steps (the encoder, the start of the search, the result). bench/sentence_time.py splits this
runtime's step into its graph run and its host work; the slope puts CTranslate2's beside it.
The default lengths span test2016's (17 tokens on average); below about 10 tokens, engines on
two threads take far longer than their slope says (a pool's start, not its steps), which would
bend the line.

The engines, graphs and workers are bench/one_sentence.py's (the same `--work` directory is
reused), in process only: int8 and fp32, one and two threads, and with `--shortlist` CTranslate2
with its own shortlist too (`ctranslate2-vmap`). The workers alternate every block of five
sentences at each length, the order rotated, as there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import one_sentence  # noqa: E402
from bench.one_sentence import PAUSE_S, REFERENCES, SENTENCES, VMAP_CONFIGS, _Worker, prepare  # noqa: E402

CONFIGS = [config for config in one_sentence.CONFIGS if config[0] != "mtserve-http"]  # in process only
Config = tuple[str, str, int]


def fit(points: dict[int, float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (length, ms)."""
    slope, intercept = statistics.linear_regression(list(points), list(points.values()))
    return slope, intercept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default", help="a checkpoint directory")
    parser.add_argument("--lengths", type=int, nargs="+", default=[12, 20, 28, 36], help="forced output tokens")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the sentences at every length")
    parser.add_argument("--block", type=int, default=5, help="sentences a worker translates in a row")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--shortlist", type=int, default=0, help="this runtime's graphs with an output shortlist of N")
    args = parser.parse_args()
    if len(set(args.lengths)) < 2 or min(args.lengths) < 1:
        parser.error("--lengths needs at least two different lengths of 1 or more")
    work = args.work or Path(tempfile.mkdtemp(prefix="mtserve-step-slope-"))
    dirs = prepare(args.model, work, args.data_dir, False, args.shortlist)
    worker_args = argparse.Namespace(model=args.model, data_dir=args.data_dir)
    configs = CONFIGS + (VMAP_CONFIGS if args.shortlist else [])
    workers = {config: _Worker(config, dirs[config[:2]], worker_args) for config in configs}
    for w in workers.values():
        w.wait_ready()
    # times[config][round][length]: the milliseconds of each sentence
    times: dict[Config, list[dict[int, list[float]]]] = {config: [] for config in configs}
    try:
        for round_index in range(args.rounds):
            for config in configs:
                times[config].append({length: [] for length in args.lengths})
            turn = 0
            for length in args.lengths:
                for start in range(0, SENTENCES, args.block):
                    shift = (round_index + turn) % len(configs)
                    turn += 1
                    for config in configs[shift:] + configs[:shift]:
                        for index in range(start, min(start + args.block, SENTENCES)):
                            times[config][-1][length].append(workers[config].translate(index, length)[0])
                        time.sleep(PAUSE_S)
            for config in configs:
                slope, intercept = fit({n: statistics.median(t) for n, t in times[config][-1].items()})
                print(json.dumps({"engine": config[0], "precision": config[1], "threads": config[2],
                                  "round": round_index, "step_ms": round(slope, 3),
                                  "rest_ms": round(intercept, 2)}), flush=True)  # fmt: skip
    finally:
        for w in workers.values():
            w.close()
    steps: dict[Config, float] = {}
    for config, rounds in times.items():
        medians = {n: statistics.median(t for r in rounds for t in r[n]) for n in args.lengths}
        slope, intercept = fit(medians)
        steps[config] = slope
        per_round = [round(fit({n: statistics.median(r[n]) for n in args.lengths})[0], 3) for r in rounds]
        print(json.dumps({"summary": config[0], "precision": config[1], "threads": config[2],
                          "median_ms_by_length": {n: round(m, 2) for n, m in medians.items()},
                          "step_ms": round(slope, 3), "rest_ms": round(intercept, 2),
                          "step_ms_per_round": per_round}))  # fmt: skip
    engines = {c[0] for c in configs}
    best = {engine: min((s, c) for c, s in steps.items() if c[0] == engine) for engine in engines}
    for reference in (r for r in REFERENCES if r in engines):
        print(json.dumps({"mtserve_best_step": [round(best["mtserve"][0], 3), *best["mtserve"][1][1:]],
                          f"{reference}_best_step": [round(best[reference][0], 3), *best[reference][1][1:]],
                          "ratio": round(best["mtserve"][0] / best[reference][0], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
