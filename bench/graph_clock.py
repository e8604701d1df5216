"""The graph runs of a translation, timed where they are called: onnxruntime's `run` (the encoder)
and each decoder step's run on its binding (service/runtime/direct_run.py's `binding_runner`,
through which sessions.py runs every step: a step cut at its attention nodes as one, its segments'
runs and the host's attention between them), so that no profiler slows the host's work between
them. What is left of a translation's time is the host's: the search, the bindings, the text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import onnxruntime as ort

from service.runtime import direct_run


class RunClock:
    """Seconds spent inside the timed calls, how many there were, and when the first began and the
    last ended, since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.first_start = self.last_end = 0.0

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.last_end = time.perf_counter()
                self.seconds += self.last_end - started
                self.first_start = self.first_start or started
                self.calls += 1

        return timed


@contextmanager
def timed_runs() -> Iterator[tuple[RunClock, RunClock]]:
    """(encoder clock, decoder clock) over every model's runs while the block lasts."""
    encoder, decoder = RunClock(), RunClock()
    run, runner = ort.InferenceSession.run, direct_run.binding_runner

    def timed_runner(session: Any) -> Callable[[Any], None]:
        return decoder.wrap(runner(session))

    ort.InferenceSession.run = encoder.wrap(run)
    direct_run.binding_runner = timed_runner
    try:
        yield encoder, decoder
    finally:
        ort.InferenceSession.run, direct_run.binding_runner = run, runner
