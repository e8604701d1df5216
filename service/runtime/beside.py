"""Host work on a helper thread while the calling thread waits on a graph's run.

A sentence alone runs its graphs on one thread (widths.py), and the process's other CPU idles
meanwhile: what the search needs only after the encoder (its output layer's shortlist) is made
there, beside the encoder's run, rather than before or after it. One helper thread per process,
made at first use (a forked child makes its own)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _forget_in_child() -> None:
    global _pool
    _pool = None  # the parent's thread does not exist in a forked child


os.register_at_fork(after_in_child=_forget_in_child)


def beside(work: Callable[[], T]) -> Callable[[], T]:
    """Starts `work` on the helper thread; returns what waits for its result (raising what it raised)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtserve-beside")
        future = _pool.submit(work)
    return future.result
