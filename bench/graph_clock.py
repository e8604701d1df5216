"""The graph runs of a translation, timed where they are called: onnxruntime's `run` (the encoder)
and `run_with_iobinding` (the decoder steps), so that no profiler slows the host's work between
them. What is left of a translation's time is the host's: the search, the bindings, the text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import onnxruntime as ort


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
    """(encoder clock, decoder clock) over every session's runs while the block lasts."""
    encoder, decoder = RunClock(), RunClock()
    run, bound = ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding
    ort.InferenceSession.run = encoder.wrap(run)
    ort.InferenceSession.run_with_iobinding = decoder.wrap(bound)
    try:
        yield encoder, decoder
    finally:
        ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding = run, bound
