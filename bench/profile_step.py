"""Where one decoder step spends its time: `python bench/profile_step.py [--model DIR] [--rows 640]`.

Runs the decoder step graph under onnxruntime's profiler on random inputs of the given shape, on a
thread that flushes denormals as a search's does, and prints total milliseconds per step, the
slowest nodes and the time per operator type.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.step_inputs import add_shape_options, random_step  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR  # noqa: E402
from service.runtime import denormals  # noqa: E402
from service.runtime.sessions import OnnxModel, run_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    add_shape_options(parser, 640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    model = OnnxModel(args.model, 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "step")
    session = ort.InferenceSession(str(args.model / model.manifest.files["decoder"]), options)
    feeds = random_step(model, args, ["top_log_probs", "top_ids"])
    with denormals.flushed():  # as a search runs its steps
        for _ in range(args.steps):  # the same step each time: the cache does not advance
            run_step(session, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: collections.Counter[str] = collections.Counter()
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            per_node[f"{event['name'].removesuffix('_kernel_time')} ({op})"] += event["dur"]
            per_op[op] += event["dur"]
    total = sum(per_node.values()) / args.steps / 1000
    layout = f"{args.rows} rows = {args.rows // args.beam} sentences x beam {args.beam}, past {args.past}"
    print(f"{total:.1f} ms per step ({layout}, source {args.source}, {args.threads} threads)")
    for title, counts in (("nodes", per_node.most_common(args.top)), ("by operator", per_op.most_common())):
        print(f"-- {title}")
        for name, micros in counts:
            ms = micros / args.steps / 1000
            print(f"{ms:8.3f} ms  {ms / total:5.1%}  {name}")


if __name__ == "__main__":
    main()
