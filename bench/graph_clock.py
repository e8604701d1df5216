"""The graph runs of a translation, timed where they are called: onnxruntime's `run` (the encoder)
and `run_with_iobinding` (the decoder steps; a step cut at its self-attention nodes as one, its
segments' runs and the host's attention between them: service/runtime/segmented.py), so that no
profiler slows the host's work between them. What is left of a translation's time is the host's:
the search, the bindings, the text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import onnxruntime as ort

from service.runtime.segmented import SegmentedSession


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
    run, bound, segmented = (
        ort.InferenceSession.run,
        ort.InferenceSession.run_with_iobinding,
        SegmentedSession.run_with_iobinding,
    )
    timed_bound = decoder.wrap(bound)
    in_step = [False]  # a segmented step's own runs are part of its time, not steps of their own

    def step(self: SegmentedSession, *args: Any, **kwargs: Any) -> Any:
        in_step[0] = True
        try:
            return segmented(self, *args, **kwargs)
        finally:
            in_step[0] = False

    def segment_or_step(self: ort.InferenceSession, *args: Any, **kwargs: Any) -> Any:
        return bound(self, *args, **kwargs) if in_step[0] else timed_bound(self, *args, **kwargs)

    ort.InferenceSession.run = encoder.wrap(run)
    ort.InferenceSession.run_with_iobinding = segment_or_step
    SegmentedSession.run_with_iobinding = decoder.wrap(step)  # type: ignore[method-assign]
    try:
        yield encoder, decoder
    finally:
        ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding = run, bound
        SegmentedSession.run_with_iobinding = segmented  # type: ignore[method-assign]
