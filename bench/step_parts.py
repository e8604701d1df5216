"""A served decoder step's parts, each timed where it is called: `python bench/step_parts.py [--model DIR]
[--rows 465] [--past 20] [--source 20] [--threads 1] [--steps 30]`.

The step runs as the runtime runs it (service/runtime/segmented.py where MTSERVE_HOST_ATTENTION cuts
it): onnxruntime's segments, the host's self-attention and cross-attention kernels between them,
then the runtime's top-k and projection where the graph leaves them to the host (`select`), on the
random inputs of bench/step_inputs.py, on a thread that flushes denormals as a search's does. Every
part is timed at each run, so that each sees the caches as the parts before it leave them, as a
large batch's step does: the cache of a batch this size does not fit the CPU's caches. Prints one
JSON line: the step's median milliseconds (its parts and `select`), the host's self-attention and
cross-attention summed over the layers, and each other part's median (each segment's run, `select`).
A step left whole has no segments and no kernels of the host's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.step_inputs import add_shape_options, random_step  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR  # noqa: E402
from service.runtime import denormals, direct_run, segmented  # noqa: E402
from service.runtime.sessions import OnnxModel  # noqa: E402

Seconds = dict[str, list[float]]
KERNELS = ("self_attention", "cross_attention")  # the host's, between a cut step's segments


def timed(name: str, call: Callable[..., Any], seconds: Seconds) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            seconds[name].append(time.perf_counter() - started)

    return run


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    add_shape_options(parser, 465)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    return parser


def step_parts(args: argparse.Namespace) -> dict[str, object]:
    """The step's and its parts' median milliseconds over `args.steps` runs (the module's doc)."""
    seconds: Seconds = defaultdict(list)
    model = OnnxModel(args.model, args.threads)
    session = model.decoder.wide
    if isinstance(session, segmented.SegmentedSession):  # its kernels are read when a binding first runs
        session.attend = timed(KERNELS[0], session.attend, seconds)
        session.cross_attend = timed(KERNELS[1], session.cross_attend, seconds)
    made, run_segment = 0, direct_run.direct_run

    def timed_segment(session: Any, binding: Any, run_options: Any = None) -> Callable[[], object]:
        nonlocal made  # the segments' runs are made in order when a binding is first run
        made += 1
        return timed(f"segment {made - 1}", run_segment(session, binding, run_options), seconds)

    direct_run.direct_run = timed_segment
    try:
        feeds = random_step(model, args, ["top_log_probs", "top_ids", "eos_log_prob"])
        binding = feeds.bind(session)
        with denormals.flushed():  # as a search runs its steps
            for _ in range(5):
                session.run_with_iobinding(binding)
                feeds.select()
            seconds.clear()
            per_step: Seconds = defaultdict(list)  # each kernel's calls in a step (one a layer it cuts), summed
            for _ in range(args.steps):
                called = {name: len(seconds[name]) for name in KERNELS}
                started = time.perf_counter()
                session.run_with_iobinding(binding)
                ran = time.perf_counter()
                feeds.select()
                seconds["select"].append(time.perf_counter() - ran)
                seconds["step"].append(time.perf_counter() - started)
                for name in KERNELS:
                    if calls := seconds[name][called[name] :]:
                        per_step[name].append(sum(calls))
    finally:
        direct_run.direct_run = run_segment

    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1e3, 3)

    row: dict[str, object] = {"model": str(args.model), "rows": args.rows, "past": args.past, "source": args.source}
    row["step_ms"] = ms(seconds.pop("step"))
    row |= {f"{name}_ms": ms(values) for name, values in per_step.items()}
    row["parts_ms"] = {name: ms(values) for name, values in seconds.items() if name not in KERNELS and values}
    return row


def main() -> None:
    print(json.dumps(step_parts(parser().parse_args())), flush=True)


if __name__ == "__main__":
    main()
