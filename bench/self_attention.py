"""The decoder's self-attention over the cache alone, three ways, on random inputs:
`python bench/self_attention.py [--sentences 1 32 128] [--past 2 10 30] [--runs 30]`.

- `dmmha`: onnxruntime's DecoderMaskedMultiHeadAttention as the decoder step runs it
  (export/graph_builder.py): the cache preallocated for --capacity positions, each row reading
  its earlier positions through the beam indirection, its present key and value bound to the
  past buffers (no copy).
- `products`: matrix products over a cache laid out by sentence and head, all of a sentence's
  beams side by side: one product scores each row against every beam's history, GatherElements
  keeps the positions the row's indirection names, and ScatterElements puts the weights back for
  the product with the values.
- `plain`: matrix products over each row's own history, contiguous: what the attention costs
  where the cache is kept reordered (copies not counted).

One layer, beam 5, the default model's 4 heads of 64, one thread; the new token's own key and
the padding mask are left out of the last two, so they are floors. Prints the median
microseconds per layer of each, per sentence count and history length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

HEADS, HEAD_DIM, BEAM = 4, 64, 5
MS_DOMAIN = "com.microsoft"
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _input(name: str, dtype: int, shape: Sequence[str | int]) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _model(nodes: Sequence[NodeProto], inputs: Sequence[ValueInfoProto], outputs: Sequence[str]) -> ModelProto:
    results = [helper.make_tensor_value_info(o, F32, None) for o in outputs]
    graph = helper.make_graph(list(nodes), "attention", list(inputs), results)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])


def dmmha_model(capacity: int) -> ModelProto:
    width = HEADS * HEAD_DIM
    inputs = [_input(n, F32, ["B", 1, width]) for n in ("q", "k", "v")]
    inputs += [_input(n, F32, ["B", HEADS, capacity, HEAD_DIM]) for n in ("past_key", "past_value")]
    inputs += [_input("past_length", TensorProto.INT32, [1]), _input("beam_width", TensorProto.INT32, [1])]
    inputs += [_input("indirection", TensorProto.INT32, ["S", BEAM, capacity])]
    node = helper.make_node(
        "DecoderMaskedMultiHeadAttention",
        ["q", "k", "v", "", "", "past_key", "past_value", "past_length", "beam_width", "indirection"],
        ["out", "present_key", "present_value"], domain=MS_DOMAIN, num_heads=HEADS, past_present_share_buffer=1,
    )  # fmt: skip
    return _model([node], inputs, ["out", "present_key", "present_value"])


def products_model() -> ModelProto:
    inputs = [
        _input("q", F32, ["S", HEADS, BEAM, HEAD_DIM]),
        _input("keys_t", F32, ["S", HEADS, HEAD_DIM, "BP"]),
        _input("values", F32, ["S", HEADS, "BP", HEAD_DIM]),
        _input("index", I64, ["S", HEADS, BEAM, "P"]),
        _input("zeros", F32, ["S", HEADS, BEAM, "BP"]),
    ]
    nodes = [
        helper.make_node("MatMul", ["q", "keys_t"], ["every_beam"]),  # [S, H, beam, beam · P]
        helper.make_node("GatherElements", ["every_beam", "index"], ["scores"], axis=3),  # [S, H, beam, P]
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("ScatterElements", ["zeros", "index", "weights"], ["placed"], axis=3),
        helper.make_node("MatMul", ["placed", "values"], ["out"]),  # [S, H, beam, D]
    ]
    return _model(nodes, inputs, ["out"])


def plain_model() -> ModelProto:
    inputs = [
        _input("q", F32, ["B", HEADS, 1, HEAD_DIM]),
        _input("keys_t", F32, ["B", HEADS, HEAD_DIM, "P"]),
        _input("values", F32, ["B", HEADS, "P", HEAD_DIM]),
    ]
    nodes = [
        helper.make_node("MatMul", ["q", "keys_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "values"], ["out"]),
    ]
    return _model(nodes, inputs, ["out"])


def _session(model: ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _median_us(run: Callable[[], object], runs: int) -> float:
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e6)
    return round(statistics.median(times), 1)


class Bench:
    def __init__(self, capacity: int, runs: int) -> None:
        self.capacity, self.runs = capacity, runs
        self.rng = np.random.default_rng(0)
        self.dmmha, self.products, self.plain = (
            _session(dmmha_model(capacity)), _session(products_model()), _session(plain_model())
        )  # fmt: skip

    def normal(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32)

    def dmmha_us(self, sentences: int, past: int) -> float:
        rows, width = sentences * BEAM, HEADS * HEAD_DIM
        feeds = {name: self.normal(rows, 1, width) for name in ("q", "k", "v")}
        feeds |= {name: self.normal(rows, HEADS, self.capacity, HEAD_DIM) for name in ("past_key", "past_value")}
        feeds |= {"past_length": np.array([past], np.int32), "beam_width": np.array([BEAM], np.int32)}
        feeds["indirection"] = self.rng.integers(0, BEAM, (sentences, BEAM, self.capacity)).astype(np.int32)
        binding = self.dmmha.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("out", "cpu")
        for past_name, present in (("past_key", "present_key"), ("past_value", "present_value")):
            buffer = feeds[past_name]  # present is past: the runtime binds them to one buffer
            binding.bind_output(present, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        return _median_us(lambda: self.dmmha.run_with_iobinding(binding), self.runs)

    def products_us(self, sentences: int, past: int) -> float:
        beams = self.rng.integers(0, BEAM, (sentences, 1, BEAM, past))  # each row's beam at each position
        index = np.ascontiguousarray(np.broadcast_to(beams * past + np.arange(past), (sentences, HEADS, BEAM, past)))
        feeds = {
            "q": self.normal(sentences, HEADS, BEAM, HEAD_DIM),
            "keys_t": self.normal(sentences, HEADS, HEAD_DIM, BEAM * past),
            "values": self.normal(sentences, HEADS, BEAM * past, HEAD_DIM),
            "index": index,
            "zeros": np.zeros((sentences, HEADS, BEAM, BEAM * past), np.float32),
        }
        return _median_us(lambda: self.products.run(None, feeds), self.runs)

    def plain_us(self, sentences: int, past: int) -> float:
        rows = sentences * BEAM
        feeds = {
            "q": self.normal(rows, HEADS, 1, HEAD_DIM),
            "keys_t": self.normal(rows, HEADS, HEAD_DIM, past),
            "values": self.normal(rows, HEADS, past, HEAD_DIM),
        }
        return _median_us(lambda: self.plain.run(None, feeds), self.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--past", type=int, nargs="+", default=[2, 10, 30])
    parser.add_argument("--capacity", type=int, default=64, help="positions the dmmha cache holds")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    bench = Bench(args.capacity, args.runs)
    for sentences in args.sentences:
        for past in args.past:
            print(json.dumps({
                "rows": sentences * BEAM, "past": past,
                "dmmha_us": bench.dmmha_us(sentences, past),
                "products_us": bench.products_us(sentences, past),
                "plain_us": bench.plain_us(sentences, past),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
