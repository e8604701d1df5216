"""Denormal floats flushed to zero while a search runs its graphs, on the thread that runs them.

A row's columns outside its sentence's shortlist carry -inf into the decoder step's log-softmax
(service/runtime/shortlist.py), whose exponentials then land below float32's normal range. On an
Intel Xeon each such denormal result took a microcode assist: a log-softmax over 400 rows of
8,192 columns, 85% of them masked, took 18 ms instead of 2, and a 400-row step 33 ms instead of
24 (docs/BENCHMARKS.md). Flushed to zero, a masked column's share of the row's sum is 0 instead of
4e-39, and every log-probability the search reads is the same.

x86 keeps the two modes (FTZ, DAZ) per thread. onnxruntime sets them on its own pool's threads
(`session.set_denormal_as_zero`, sessions.py), but a graph run on one thread runs on the caller's,
so a search sets them on its own thread while it lasts (`flushed`) and puts them back after: the
thread may be a caller's own, whose other floating-point work is not the search's to change.
onnxruntime also sets them, once a process, on the thread that makes its first session, before
that session folds its graph's constants: so that no model's graph is folded in another mode for
having been loaded first, the process's first session is one of its own (`first_session`). Where
the C module is not built (no compiler at hand), a search's thread flushes only if onnxruntime made
it so (the thread that made the process's first session), and large batches are slower there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import ModuleType

_module: ModuleType | None
try:
    from service.runtime import _denormals as _module
except ImportError:
    _module = None


@contextlib.contextmanager
def flushed() -> Iterator[None]:
    """FTZ and DAZ on the calling thread while the block runs, then as they were."""
    if _module is None:
        yield
        return
    before = _module.swap(_module.FLUSH)
    try:
        yield
    finally:
        _module.swap(before)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """The calling thread's FTZ and DAZ as they were before the block, whatever it set: onnxruntime
    sets them on the thread that creates a process's first session with `set_denormal_as_zero`."""
    if _module is None:
        yield
        return
    before = _module.current()
    try:
        yield
    finally:
        _module.swap(before)


def flushing() -> bool:
    """Whether the calling thread flushes denormals (both modes set)."""
    if _module is None:
        return False
    return bool(_module.FLUSH) and _module.current() == _module.FLUSH


# A graph of one Identity node over a float [1] (opset 21, IR 10), serialized: what
# tests/test_denormals.py makes with onnx.helper. Written out here so that the service need not
# import onnx (about 11 MiB a process) for it.
IDENTITY_GRAPH = (
    b'\x08\n:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05firstZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01'
    b"b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x15"
)


@functools.cache
def first_session() -> None:
    """Makes the process's first onnxruntime session, of IDENTITY_GRAPH, and puts the thread's modes
    back after it. onnxruntime sets FTZ and DAZ (as the session's `set_denormal_as_zero` says) on the
    thread that makes a process's first session, before that session folds its graph's constants
    (the fp16 initializers cast to fp32, products of constants): a model's graph made first was
    folded with denormal inputs read as zero, the others were not. A CPU whose fp16 conversion
    honours DAZ (an emulated one did, docs/BENCHMARKS.md) then translated with a model differently
    when it was the first loaded. Called before every session the runtime makes: each then folds
    its graph in the thread's own mode, whichever model comes first. The session asks for the modes
    as the runtime's do: where the C module is not built, `kept` cannot put them back, so they stay
    set on the thread, as a model's first session left them, and every graph folds with them set."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    with kept():
        ort.InferenceSession(IDENTITY_GRAPH, options, providers=["CPUExecutionProvider"])
