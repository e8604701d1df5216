"""Denormals flushed or not: a masked log-softmax and a decoder step, on the calling thread.

    python bench/denormals.py [--model DIR] [--rows 400] [--width 8192] [--masked 0.85] [--rounds 5]

A batch's rows each mask the columns outside their sentence's shortlist with -inf
(service/runtime/shortlist.py), and onnxruntime's log-softmax then makes exponentials below
float32's normal range (service/runtime/denormals.py). Two measurements, each alternating a block
of runs with the thread's denormals flushed (`denormals.flushed`, as a search runs) and a block
without, `--rounds` times, on one thread (onnxruntime then runs on the caller's):

- `log_softmax`: one LogSoftmax node over [rows, width] float32, `--masked` of each row's columns
  -inf, the rest normal draws (and the same with none masked);
- `decoder_step`: the model's decoder step at `--rows` rows on random sources (bench/step_inputs.py:
  their shortlists' union is most of the vocabulary, as in a large batch of long sentences).

Prints a JSON line per measurement: the median over rounds of each way's block median, in
milliseconds, and the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import median_ms  # noqa: E402
from bench.step_inputs import add_shape_options, random_step  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR  # noqa: E402
from service.runtime import denormals  # noqa: E402
from service.runtime.sessions import OnnxModel, run_step  # noqa: E402

RUNS_PER_BLOCK = 10


def _session(model: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with denormals.kept():
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _log_softmax(width: int) -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", width])
    graph = helper.make_graph([helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1)], "log_softmax", [x], [y])
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _compare(name: str, run: Callable[[], object], rounds: int, **shape: object) -> None:
    """Blocks of RUNS_PER_BLOCK runs flushed, then not, `rounds` times: the medians of the blocks'
    medians, and the median of the rounds' ratios."""
    run()
    flushed: list[float] = []
    unflushed: list[float] = []
    for _ in range(rounds):
        with denormals.flushed():
            flushed.append(median_ms(run, RUNS_PER_BLOCK))
        unflushed.append(median_ms(run, RUNS_PER_BLOCK))
    ratios = [a / b for a, b in zip(flushed, unflushed, strict=True)]
    row = {"measure": name, **shape, "flushed_ms": round(statistics.median(flushed), 3),
           "unflushed_ms": round(statistics.median(unflushed), 3),
           "flushed_over_unflushed": round(statistics.median(ratios), 3)}  # fmt: skip
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    add_shape_options(parser, 400)
    parser.add_argument("--width", type=int, default=8192, help="the log-softmax's columns")
    parser.add_argument("--masked", type=float, default=0.85, help="share of each row's columns at -inf")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if denormals._module is None:
        raise SystemExit("service/runtime/_denormals.c is not built: `pip install -e .`")
    if denormals.flushing():
        raise SystemExit("this thread already flushes denormals: nothing to compare against")

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((args.rows, args.width)) * 3).astype(np.float32)
    masked = logits.copy()
    masked[rng.random(masked.shape) < args.masked] = -np.inf
    log_softmax = _log_softmax(args.width)
    for share, x in ((args.masked, masked), (0.0, logits)):
        run = functools.partial(log_softmax.run, None, {"x": x})
        _compare("log_softmax", run, args.rounds, rows=args.rows, width=args.width, masked=share)

    model = OnnxModel(args.model, 1)
    step = _session(str(args.model / model.manifest.files["decoder"]))
    feeds = random_step(model, args, ["top_log_probs", "top_ids"])
    _compare("decoder_step", lambda: run_step(step, feeds), args.rounds, rows=args.rows, past=args.past,
             source=args.source)  # fmt: skip


if __name__ == "__main__":
    main()
