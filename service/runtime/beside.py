"""Host work on a helper thread while the calling thread waits on a graph's run.

A sentence alone runs its graphs on one thread (widths.py), and the process's other CPU idles
meanwhile: what the search needs only after the encoder (its output layer's shortlist) is made
there, during the encoder's run, rather than before or after it.

The work starts only when the run does (`Beside.start`, called just before the run lets go of
the interpreter lock). Started earlier, the helper's Python takes the lock from the caller's own
host work before the run, and a pool's hand-off costs tens of microseconds more than a queue's
(docs/BENCHMARKS.md). One helper thread per process, made at first use (a forked child makes its
own)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")

HELPER_THREAD_NAME = "mtserve-beside"

_lock = threading.Lock()
_jobs: queue.SimpleQueue[Beside[Any]] | None = None


def _forget_in_child() -> None:
    global _jobs
    _jobs = None  # the parent's thread does not exist in a forked child


os.register_at_fork(after_in_child=_forget_in_child)


def _serve(jobs: queue.SimpleQueue[Beside[Any]]) -> None:
    while True:
        jobs.get()._run()


def _helper_jobs() -> queue.SimpleQueue[Beside[Any]]:
    global _jobs
    with _lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_jobs,), name=HELPER_THREAD_NAME, daemon=True).start()
        return _jobs


class Beside(Generic[T]):
    """`work`, run on the helper thread from `start` on; or, where it was not started (or `on_helper`
    is False), on the caller's thread when its result is asked for. The result, or what the work
    raised, comes back from the call."""

    def __init__(self, work: Callable[[], T], on_helper: bool = True) -> None:
        self._work = work
        self._on_helper = on_helper
        self._started = False
        self._done = threading.Lock()
        self._done.acquire()  # released by the helper once the work has run
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Hands the work to the helper thread (once; nothing where it runs on the caller's)."""
        if self._on_helper and not self._started:
            self._started = True
            _helper_jobs().put(self)

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as exc:  # raised where the result is asked for
            self._error = exc
        finally:
            self._done.release()

    def __call__(self) -> T:
        if not self._started:
            return self._work()
        with self._done:
            pass
        if self._error is not None:
            raise self._error
        return cast(T, self._result)
