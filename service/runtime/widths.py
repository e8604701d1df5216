"""Whether a model's small searches run faster on one thread than on all of them, measured.

A search of one sentence at beam 5 runs steps of five rows, mostly nodes of a few microseconds
each, where onnxruntime's second thread costs a hand-off at every node. Whether that pays
depends on the CPU and the graphs: on the AVX2 machine of docs/BENCHMARKS.md the int8 graphs
ran a sentence about as fast on two threads as on one and the fp32 ones a quarter faster, while
on an AVX-512 VNNI machine the int8 graphs with a shortlist of 1,024 tokens ran it a fifth
faster on one thread, while the same graphs over the whole vocabulary ran it faster on two. So
each model measures it once, when loaded, on a sentence of its own: both widths in turn, the
median of a few searches each.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

from service.runtime.sessions import SMALL_SEARCH_ROWS, OnnxModel

log = logging.getLogger("mtserve.runtime")
WARM_SEARCHES = 1  # each width's first searches grow its arena and caches: not measured
MEASURED_SEARCHES = 3


def measure_small_searches(model: OnnxModel, search: Callable[[], object]) -> bool | None:
    """Sets `model.small_searches_narrow` to whether `search` (one small search) ran faster held to
    one thread than on all the model's threads, and returns it; None, and the setting left as it
    was, where the model has one thread, or where another search was in progress in the process
    (which would have held both widths to one thread)."""
    if model.decoder.narrow is model.decoder.wide or model.others_searching():
        return None
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(WARM_SEARCHES + MEASURED_SEARCHES):
        for narrow in (False, True) if round_index % 2 == 0 else (True, False):
            started = time.perf_counter()
            with model.searching(narrow=narrow):
                search()
            if round_index >= WARM_SEARCHES:
                seconds[narrow].append(time.perf_counter() - started)
    if model.others_searching():  # another search began meanwhile: the widths were not what they seemed
        return None
    wide_s, narrow_s = statistics.median(seconds[False]), statistics.median(seconds[True])
    model.small_searches_narrow = narrow_s < wide_s
    log.info(
        "%s: a search of up to %d rows takes %s (%.2f ms on one thread, %.2f ms on %d)",
        model.model_dir.name, SMALL_SEARCH_ROWS, "one thread" if narrow_s < wide_s else f"{model.threads} threads",
        narrow_s * 1000, wide_s * 1000, model.threads,
    )  # fmt: skip
    return model.small_searches_narrow
