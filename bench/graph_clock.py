"""The graph runs of a translation, timed where they are called: onnxruntime's `run` (the encoder;
an encoder cut at its attention nodes as one, service/runtime/encoder_segments.py) and each decoder
step's run on its binding (service/runtime/direct_run.py's `binding_runner`, through which
sessions.py runs every step: a step cut at its attention nodes as one, its segments' runs and the
host's attention between them), so that no profiler slows the host's work between them. What is
left of a translation's time is the host's: the search, the bindings, the text."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import onnxruntime as ort

from service.runtime import direct_run
from service.runtime.encoder_segments import SegmentedEncoder


class RunClock:
    """Seconds spent inside the timed calls, how many there were, and when the first began and the
    last ended, since the last reset; a timed call made inside another on the same thread (a cut
    encoder's segments) is the outer one's."""

    def __init__(self) -> None:
        self._inside = threading.local()
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.first_start = self.last_end = 0.0

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._inside, "depth", 0):
                return call(*args, **kwargs)
            started = time.perf_counter()
            self._inside.depth = 1
            try:
                return call(*args, **kwargs)
            finally:
                self._inside.depth = 0
                self.last_end = time.perf_counter()
                self.seconds += self.last_end - started
                self.first_start = self.first_start or started
                self.calls += 1

        return timed


@contextmanager
def timed_runs() -> Iterator[tuple[RunClock, RunClock]]:
    """(encoder clock, decoder clock) over every model's runs while the block lasts."""
    encoder, decoder = RunClock(), RunClock()
    run, runner, segmented = ort.InferenceSession.run, direct_run.binding_runner, SegmentedEncoder.run

    def timed_runner(session: Any) -> Callable[[Any], None]:
        return decoder.wrap(runner(session))

    ort.InferenceSession.run = encoder.wrap(run)
    SegmentedEncoder.run = encoder.wrap(segmented)  # type: ignore[method-assign]
    direct_run.binding_runner = timed_runner
    try:
        yield encoder, decoder
    finally:
        ort.InferenceSession.run, direct_run.binding_runner = run, runner
        SegmentedEncoder.run = segmented  # type: ignore[method-assign]
