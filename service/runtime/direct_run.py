"""A session's run on its IO binding without onnxruntime's Python wrapper around it.

`InferenceSession.run_with_iobinding` checks, before each run, that the binding is the session's
and whether a WebGPU graph is being captured, and given no RunOptions, its C++ side makes a new
one for every run. A run of a one-node graph took 1.80 µs through the wrapper and 1.17 µs called
on the session's C++ object with one RunOptions made once (docs/BENCHMARKS.md); a decoder step
cut into segments runs each of them a step (four by default, seven with the cross-attention on the
host). The runtime's sessions are its own, on the CPU,
and every binding is made by the session it runs, so the checks never fail here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import onnxruntime as ort

# Read by onnxruntime during a run, never written: one object serves every thread.
_RUN_OPTIONS = ort.RunOptions()


def direct_run(session: Any, binding: Any, run_options: ort.RunOptions | None = None) -> Callable[[], object]:
    """A call that runs `session` on `binding` (an InferenceSession and its IOBinding, or any object
    with their methods, which is run through them)."""
    own, bound = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
    if own is None or bound is None:
        return functools.partial(session.run_with_iobinding, binding, run_options)
    return functools.partial(own.run_with_iobinding, bound, _RUN_OPTIONS if run_options is None else run_options)


def binding_runner(session: Any) -> Callable[[Any], None]:
    """What runs `session` on a binding given at each call, as `session.run_with_iobinding` does."""
    own = getattr(session, "_sess", None)
    if own is None:
        return session.run_with_iobinding  # type: ignore[no-any-return]
    run = own.run_with_iobinding

    def run_on(binding: Any) -> None:
        run(binding._iobinding, _RUN_OPTIONS)

    return run_on
