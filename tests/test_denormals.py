"""Denormal floats flushed to zero on a search's thread while it runs (service/runtime/denormals.py),
and the thread's own floating-point mode as it was before and after."""

from __future__ import annotations

import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.runtime import denormals

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"), reason="FTZ and DAZ are x86's"
)


def _underflow() -> float:
    """A float32 product below the normal range: a denormal, or 0 where the thread flushes."""
    return float(np.float32(1e-30) * np.float32(1e-10))


def test_the_module_is_built() -> None:
    assert denormals._module is not None, "service/runtime/_denormals.c was not built: `pip install -e .`"


def test_flushed_sets_both_modes_and_puts_them_back() -> None:
    assert not denormals.flushing()
    assert _underflow() != 0.0
    with denormals.flushed():
        assert denormals.flushing()
        assert _underflow() == 0.0
        with denormals.flushed():
            assert _underflow() == 0.0
        assert denormals.flushing(), "an inner block put back what the outer one set"
    assert not denormals.flushing()
    assert _underflow() != 0.0
    with pytest.raises(RuntimeError), denormals.flushed():
        raise RuntimeError("the search failed")
    assert not denormals.flushing()


def test_the_modes_are_the_calling_threads_own() -> None:
    seen: list[bool] = []
    asked = threading.Event()

    def other_thread() -> None:  # started before the block (a new thread takes its creator's modes)
        asked.wait(10)
        seen.append(_underflow() == 0.0)

    thread = threading.Thread(target=other_thread)
    thread.start()
    with denormals.flushed():
        asked.set()
        thread.join()
    assert seen == [False]


# The process's first sessions are made on this thread, where onnxruntime would flush for good.
FIRST_SESSIONS = """
from service.manifest import DEFAULT_MODEL_DIR
from service.runtime import denormals
from service.runtime.translator import Translator

translator = Translator.load(DEFAULT_MODEL_DIR, 1, packed=False)  # no packing session before its own
after_load = denormals.flushing()
with translator.model.searching():
    in_search = denormals.flushing()
target = next(t for s, t in translator.languages.directions if s == "en")  # the text's language
out = translator.translate(["Two dogs are playing in the snow."], target)
print(after_load, in_search, denormals.flushing(), bool(out[0][0].text))
"""


def test_a_search_flushes_its_thread_and_leaves_it_as_it_was() -> None:
    result = subprocess.run([sys.executable, "-c", FIRST_SESSIONS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "False", "True"]


# A graph whose one constant is folded when its session is made: a denormal times 1e30.
FOLDED_CONSTANT = """
import sys
from pathlib import Path

import numpy as np

from service.runtime.sessions import _session

session = _session(Path(sys.argv[1]), 1)  # the process's first model session
print(repr(float(session.run(None, {"x": np.zeros(1, np.float32)})[0][0])))
"""


def test_a_graph_folds_its_constants_alike_whether_or_not_its_session_is_the_processs_first(tmp_path: Path) -> None:
    """onnxruntime sets FTZ and DAZ on the thread that makes a process's first session, before that
    session folds its constants; the runtime's sessions are never that first one
    (denormals.first_session), so a model's graph folds the same whichever loads first."""
    from onnx import TensorProto, helper, numpy_helper

    tiny, big = np.float32(1e-39), np.float32(1e30)  # 1e-39: below float32's normal range
    graph = helper.make_graph(
        [helper.make_node("Mul", ["tiny", "big"], ["product"]), helper.make_node("Add", ["x", "product"], ["y"])],
        "folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([tiny]), "tiny"), numpy_helper.from_array(np.array([big]), "big")],
    )
    path = tmp_path / "folded.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString())
    result = subprocess.run(
        [sys.executable, "-c", FOLDED_CONSTANT, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == float(tiny * big) != 0.0, "the constant was folded with denormals read as zero"


def test_the_first_session_is_a_graph_of_one_identity_node() -> None:
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "first",
                              [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    assert model.SerializeToString() == denormals.IDENTITY_GRAPH
