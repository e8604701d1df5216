"""A shortlisted step's output projection with its weight as an input, against the same product with
the weight an initializer: `python bench/output_packing.py [--shapes 5x1024 40x1632 400x2454]`.

A shortlisted decoder step (export/shortlist.py) reads its output projection's columns, the batch's
union, from an input. onnxruntime prepacks a constant weight once, when the session is made; a
weight that comes as an input it packs at every run. This runs onnxruntime's
`MatMulIntegerToFloat` [rows, 256] x [256, union] (uint8 activations, int8 weights, as the int8
graphs' products) both ways on one thread, alternated over --rounds, and prints the median
microseconds of each and what the packing adds.
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
    columns = weight.shape[1]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zero"], ["y"],
                            domain="com.microsoft")  # fmt: skip
    initializers = [
        numpy_helper.from_array(np.full(columns, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
    ]
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.UINT8, ["rows", WIDTH]),
        helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, ["rows", 1]),
    ]
    if constant:
        initializers.append(numpy_helper.from_array(weight, "w"))
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.INT8, [WIDTH, columns]))
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", columns])
    graph = helper.make_graph([node], "product", inputs, [output], initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["5x1024", "40x1632", "400x2454"], help="ROWSxUNION")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        rows, columns = (int(n) for n in shape.split("x"))
        weight = rng.integers(-63, 64, (WIDTH, columns)).astype(np.int8)  # 7-bit, as the export's
        feeds = {"a": rng.integers(0, 256, (rows, WIDTH)).astype(np.uint8), "a_scale": np.ones((rows, 1), np.float32)}
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
        row = {"rows": rows, "union": columns, "weight_initializer_us": round(packed_once, 1),
               "weight_input_us": round(packed_each, 1), "packing_us": round(packed_each - packed_once, 1)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
