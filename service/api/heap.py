"""The interpreter's cycle collector and what the service keeps for its whole life.

A full collection walks every object the collector tracks: about 100,000 once the service has
started (the framework's, the models'), 24 ms here, and no thread runs Python meanwhile, so
requests and searches stall for it. Under load one came every 800 or so requests, at 48 ms
(docs/BENCHMARKS.md). What start-up made lives as long as the process, so once the models are warm
it is frozen out of the collector's walks. A model let go hands its objects back first, so that
its cycles are still collected.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """After start-up: collect what start-up left behind, then freeze the rest."""
    gc.collect()
    gc.freeze()


def collect_released() -> None:
    """After a model is let go: every frozen object goes back to the collector, the garbage among
    them (the model's cycles) is collected, and what still lives is frozen again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def thaw() -> None:
    """At shutdown, and for an app made again in the same process (tests): nothing stays frozen."""
    gc.unfreeze()
