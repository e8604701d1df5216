"""Denormal floats flushed to zero on a search's thread while it runs (service/runtime/denormals.py),
and the thread's own floating-point mode as it was before and after."""

from __future__ import annotations

import platform
import subprocess
import sys
import threading

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
