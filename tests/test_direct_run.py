"""A session's run on its binding without onnxruntime's Python wrapper (service/runtime/direct_run.py):
the same outputs as the wrapper's run, and objects that are not onnxruntime's run through their own
method."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from service.runtime.direct_run import binding_runner, direct_run


def _relu_session() -> ort.InferenceSession:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [value("x", TensorProto.FLOAT, ["B", 4])], [value("y", TensorProto.FLOAT, ["B", 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_direct_run_writes_what_the_wrappers_run_writes() -> None:
    session = _relu_session()
    x = np.array([[-1.0, 2.0, -3.0, 4.0], [5.0, -6.0, 7.0, -8.0]], np.float32)
    ours, theirs = np.full_like(x, np.nan), np.full_like(x, np.nan)
    for out in (ours, theirs):
        binding = session.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_output("y", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        if out is ours:
            direct_run(session, binding)()
            x[0, 0] = -10.0  # a bound input changed in place: the next run reads it
            binding_runner(session)(binding)
        else:
            session.run_with_iobinding(binding)
    assert np.array_equal(ours, np.maximum(x, 0)) and np.array_equal(theirs, ours)


def test_an_object_that_is_not_a_session_runs_through_its_own_method() -> None:
    calls: list[tuple[object, object]] = []

    class Segmented:
        def run_with_iobinding(self, binding: object, run_options: object = None) -> None:
            calls.append((binding, run_options))

    segmented, binding, options = Segmented(), object(), ort.RunOptions()
    direct_run(segmented, binding, options)()
    binding_runner(segmented)(binding)
    assert calls == [(binding, options), (binding, None)]
