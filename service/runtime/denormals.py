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
thread may be a caller's own, whose other floating-point work is not the search's to change. Where
the C module is not built (no compiler at hand), a search's thread flushes only if onnxruntime made
it so (the thread that made the process's first session), and large batches are slower there.
"""

from __future__ import annotations

import contextlib
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
