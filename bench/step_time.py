"""One decoder step's time, several graphs side by side: `python bench/step_time.py --model DIR [DIR ...]
[--rows 5] [--threads 2] [--rounds 10] [--host-attention off self on]`.

Each model directory's decoder step runs on the same random inputs of the given shape
(bench/step_inputs.py), in the runtime's own session on --threads threads, bound as the runtime
binds a step, without the profiler (whose own cost per node is the size of a small node's), on a
thread that flushes denormals as a search's does, the runtime's top-k included where the graph has
none (service/runtime/top_k.py). The
graphs alternate: each runs --block steps in turn after a few unmeasured ones, the order reversed
every round, so that all see the same load of a shared machine. With --host-attention each
directory is loaded once per MTSERVE_HOST_ATTENTION setting given (README), in that order. Prints
per directory (and setting) the median microseconds per step over the rounds, each round's, and the
median of the per-round ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.step_inputs import add_shape_options, random_step  # noqa: E402
from service.runtime import denormals  # noqa: E402
from service.runtime.sessions import OnnxModel, StepFeeds  # noqa: E402

WARM_STEPS = 10


def _step(session: ort.InferenceSession, binding: ort.IOBinding, feeds: StepFeeds) -> None:
    session.run_with_iobinding(binding)
    feeds.select()  # the top-k, where the runtime takes it rather than the graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="exported model directories")
    add_shape_options(parser, 5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=100, help="steps per graph per round")
    parser.add_argument("--host-attention", nargs="+", default=[None], help="MTSERVE_HOST_ATTENTION settings to load")
    args = parser.parse_args()

    runs = []
    loads = [(model_dir, setting) for model_dir in args.model for setting in args.host_attention]
    for model_dir, setting in loads:
        if setting is not None:
            os.environ["MTSERVE_HOST_ATTENTION"] = setting  # read when the model loads its step
        model = OnnxModel(model_dir, args.threads)
        session = model.decoder.wide  # the runtime's own session, on all the threads
        feeds = random_step(model, args, ["top_log_probs", "top_ids", "eos_log_prob"])
        runs.append((session, feeds.bind(session), feeds))  # the feeds hold the arrays bound
    micros: list[list[float]] = [[] for _ in runs]
    with denormals.flushed():  # as a search runs its steps
        for round_ in range(args.rounds):
            order = list(range(len(runs)))
            for i in order if round_ % 2 == 0 else order[::-1]:
                session, binding, feeds = runs[i]
                for _ in range(WARM_STEPS):
                    _step(session, binding, feeds)
                started = time.perf_counter()
                for _ in range(args.block):
                    _step(session, binding, feeds)
                micros[i].append((time.perf_counter() - started) / args.block * 1e6)
    for (model_dir, setting), times in zip(loads, micros, strict=True):
        ratios = [t / first for t, first in zip(times, micros[0], strict=True)]
        row = {"model": str(model_dir), "host_attention": setting, "rows": args.rows, "threads": args.threads,
               "median_us": round(statistics.median(times), 1), "rounds_us": [round(t) for t in times],
               "ratio_to_first": round(statistics.median(ratios), 3)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
