"""The decoder's cross-attention alone, onnxruntime's node against the runtime's kernel, on random
inputs: `python bench/cross_attention.py [--sentences 1 93] [--source 16 40] [--runs 30] [--cold MB]`.

- `node`: onnxruntime's MultiHeadAttention as the decoder step runs it (export/graph_builder.py,
  cross_attention): the step's rows reshaped into sentences of --beam rows, each sentence's encoder
  keys and values [sentences, heads, source, depth], the source mask cast to int32.
- `host`: the runtime's kernel (service/runtime/_attention.c, through the C module's
  `cross_attention`) on the same inputs, as the runtime runs it between a cut step's segments
  (service/runtime/segmented.py). Checked against the node before it is timed (and in
  tests/test_attention.py).
- `exact`: the kernel in the node's own order of operations (service/runtime/_cross_attention_exact.c,
  `cross_attention` with EXACT_CROSS_KERNEL), where the node computes in its order (an AVX-512 CPU);
  checked to give the node's bits before it is timed. The runtime takes it where it gives them
  (service/runtime/cross_exact.py). `exact_avx2`: the same kernel in AVX2's vectors
  (EXACT_CROSS_KERNEL_AVX2), as a CPU without AVX-512 runs it, checked likewise.

Each sentence's source is padded past a random length, as a batch's shorter sources are. `--cold
MB` writes that much other memory before each run, as a step's other work leaves the CPU's caches.
One layer, the default model's 4 heads of 64, one thread. Prints the median microseconds per layer
of each, per sentence count and source length (`exact_us` and `exact_avx2_us` null on a CPU without
AVX-512).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.self_attention import HEAD_DIM, HEADS, MS_DOMAIN, _median_us
from service.runtime import native


def node_session(heads: int = HEADS, depth: int = HEAD_DIM) -> ort.InferenceSession:
    """The node as the exporter writes it, the rows' Reshape and the mask's Cast before it (also
    tests/test_attention.py's reference)."""
    width, f32 = heads * depth, TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask32"], to=TensorProto.INT32),
        helper.make_node("Reshape", ["rows", "shape"], ["query"]),
        helper.make_node("MultiHeadAttention", ["query", "keys", "values", "", "mask32"], ["out"], domain=MS_DOMAIN,
                         num_heads=heads),
    ]  # fmt: skip
    inputs = [
        helper.make_tensor_value_info("rows", f32, ["B", width]),
        helper.make_tensor_value_info("shape", TensorProto.INT64, [3]),
        helper.make_tensor_value_info("keys", f32, ["S", heads, "L", depth]),
        helper.make_tensor_value_info("values", f32, ["S", heads, "L", depth]),
        helper.make_tensor_value_info("mask", TensorProto.INT64, ["S", "L"]),
    ]
    graph = helper.make_graph(nodes, "cross", inputs, [helper.make_tensor_value_info("out", f32, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def inputs(
    rng: np.random.Generator, sentences: int, beam: int, source: int, heads: int = HEADS, depth: int = HEAD_DIM
) -> dict[str, np.ndarray]:
    """Rows and each sentence's keys, values and mask, zero past its source's end as the encoder leaves
    them (the first sentence whole, the others from half as long), and the rows' shape as sentences."""
    mask = np.ones((sentences, source), np.int64)
    for sentence in range(1, sentences):
        mask[sentence, rng.integers(max(1, source // 2), source + 1) :] = 0
    feeds: dict[str, np.ndarray] = {"mask": mask, "shape": np.array([sentences, -1, heads * depth], np.int64)}
    feeds["rows"] = rng.standard_normal((sentences * beam, heads * depth), dtype=np.float32)
    for name in ("keys", "values"):
        feeds[name] = rng.standard_normal((sentences, heads, source, depth), dtype=np.float32)
        feeds[name] *= mask[:, None, :, None].astype(np.float32)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, nargs="+", default=[1, 93])
    parser.add_argument("--source", type=int, nargs="+", default=[16, 40])
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold", type=int, default=0, metavar="MB", help="other memory written before each run")
    args = parser.parse_args()
    if native.common_step is None:
        raise SystemExit(native.NOT_BUILT)
    attend = native.common_step.cross_attention
    # the exact kernel in AVX-512's vectors and in AVX2's, each checked against the node where it computes
    # in AVX-512's order (an AVX-512 CPU)
    avx512 = native.common_step.exact_cross_attention() == native.common_step.EXACT_AVX512
    exact = native.common_step.EXACT_CROSS_KERNEL if avx512 else None
    exact_avx2 = native.common_step.EXACT_CROSS_KERNEL_AVX2 if avx512 else None
    session, rng = node_session(), np.random.default_rng(0)
    other = np.zeros(args.cold << 18, np.float32) if args.cold else None
    for sentences in args.sentences:
        for source in args.source:
            feeds = inputs(rng, sentences, args.beam, source)
            out, expected = np.empty_like(feeds["rows"]), np.empty_like(feeds["rows"])
            binding = session.io_binding()  # bound once, as the runtime binds a step
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            shape = [sentences, args.beam, HEADS * HEAD_DIM]
            binding.bind_output("out", "cpu", 0, np.float32, shape, expected.ctypes.data)
            session.run_with_iobinding(binding)
            attend(feeds["rows"], feeds["keys"], feeds["values"], feeds["mask"], out)
            difference = float(np.abs(out - expected).max())
            if difference > 1e-5:
                raise SystemExit(f"the host's cross-attention differs from the node's by {difference}")
            for kernel in (exact, exact_avx2):
                if kernel is not None:
                    attend(feeds["rows"], feeds["keys"], feeds["values"], feeds["mask"], out, kernel)
                    if not np.array_equal(out.view(np.int32), expected.view(np.int32)):
                        raise SystemExit(f"the exact cross-attention (kernel {kernel}) does not give the node's bits")
            print(json.dumps({
                "rows": sentences * args.beam, "source": source,
                "node_us": _median_us(lambda: session.run_with_iobinding(binding), args.runs, other),  # noqa: B023
                "host_us": _median_us(
                    lambda: attend(feeds["rows"], feeds["keys"], feeds["values"], feeds["mask"], out),  # noqa: B023
                    args.runs, other,
                ),
                **{name: None if kernel is None else _median_us(
                    lambda: attend(feeds["rows"], feeds["keys"], feeds["values"], feeds["mask"], out, kernel),  # noqa: B023
                    args.runs, other,
                ) for name, kernel in (("exact_us", exact), ("exact_avx2_us", exact_avx2))},
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
