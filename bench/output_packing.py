"""A shortlisted step's output projection with its weight as an input, against the same product with
the weight an initializer: `python bench/output_packing.py [--shapes 5x1024 40x1632 400x2454]
[--precision int8|fp32]`.

A shortlisted decoder step (export/shortlist.py) reads its output projection's columns, the batch's
union, from an input. onnxruntime prepacks a constant weight once, when the session is made; a
weight that comes as an input it packs at every run. This runs the product [rows, 256] x
[256, union] as the graphs of --precision run it (int8: `MatMulIntegerToFloat`, uint8 activations
and int8 weights; fp32: `MatMul`) both ways on one thread, alternated over --rounds, and prints
the median microseconds of each and what the packing adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

WIDTH = 256  # the committed model's d_model


def _product(weight: np.ndarray, constant: bool) -> ort.InferenceSession:
    """The product of an input `a` [rows, WIDTH] and `weight` (int8: `MatMulIntegerToFloat` with the
    activations' scale and zero point as inputs; float32: `MatMul`), the weight an initializer or
    the input `w`."""
    columns, int8 = weight.shape[1], weight.dtype == np.int8
    initializers = []
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8 if int8 else TensorProto.FLOAT, ["rows", WIDTH])]
    if int8:
        node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zero"], ["y"],
                                domain="com.microsoft")  # fmt: skip
        initializers += [
            numpy_helper.from_array(np.full(columns, 0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
        ]
        inputs.append(helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, ["rows", 1]))
    else:
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
    if constant:
        initializers.append(numpy_helper.from_array(weight, "w"))
    else:
        inputs.append(
            helper.make_tensor_value_info("w", TensorProto.INT8 if int8 else TensorProto.FLOAT, [WIDTH, columns])
        )
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", columns])
    graph = helper.make_graph([node], "product", inputs, [output], initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _inputs(
    rng: np.random.Generator, rows: int, columns: int, precision: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A weight [WIDTH, columns] (int8: 7-bit, as the export's) and the activations' feeds."""
    if precision == "int8":
        weight = rng.integers(-63, 64, (WIDTH, columns)).astype(np.int8)
        codes = rng.integers(0, 256, (rows, WIDTH)).astype(np.uint8)
        return weight, {"a": codes, "a_scale": np.ones((rows, 1), np.float32)}
    weight = rng.standard_normal((WIDTH, columns)).astype(np.float32)
    return weight, {"a": rng.standard_normal((rows, WIDTH)).astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["5x1024", "40x1632", "400x2454"], help="ROWSxUNION")
    parser.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        rows, columns = (int(n) for n in shape.split("x"))
        weight, feeds = _inputs(rng, rows, columns, args.precision)
        out = np.empty((rows, columns), np.float32)
        runs = []
        for constant in (True, False):
            session = _product(weight, constant)
            binding = session.io_binding()
            for name, array in (feeds if constant else {**feeds, "w": weight}).items():
                binding.bind_cpu_input(name, array)
            binding.bind_output("y", "cpu", 0, np.float32, [rows, columns], out.ctypes.data)
            runs.append((session, binding))
        repeats = max(10, 10_000 // rows)
        micros: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for i, (session, binding) in enumerate(runs):
                for _ in range(10):
                    session.run_with_iobinding(binding)
                started = time.perf_counter()
                for _ in range(repeats):
                    session.run_with_iobinding(binding)
                micros[i].append((time.perf_counter() - started) / repeats * 1e6)
        packed_once, packed_each = (statistics.median(m) for m in micros)
        row = {
            "precision": args.precision,
            "rows": rows,
            "union": columns,
            "weight_initializer_us": round(packed_once, 1),
            "weight_input_us": round(packed_each, 1),
            "packing_us": round(packed_each - packed_once, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
