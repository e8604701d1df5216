"""The host's work for one sentence, with the graphs' runs replayed: `python bench/host_replay.py
[--model DIR] [--beam-size 5] [--rounds 30]`.

Each of the first --sentences test2016 sentences (40) is translated alone once for real, its
encoder and decoder-step outputs recorded. Then every run returns its recorded outputs at once
(the decoder step's binding is still made or updated, as for a run), so what is timed is the
translator's whole path without onnxruntime's kernels: splitting, tokenization, the beam search's
selection and bookkeeping, the cache's reorders, the bindings, detokenization. Every replayed
translation must equal the recorded one, or the benchmark stops. Without the kernels between them
the host's steps run warm, so the figure is a floor of what a real run spends on them
(bench/sentence_time.py measures that), and it moves little from run to run on a busy machine:
the measure for changes to the host's code. Prints the median and mean milliseconds per sentence.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RuntimeBench, bench_target  # noqa: E402
from service.runtime import sessions  # noqa: E402

Runs = list[list[np.ndarray]]


@contextmanager
def _runs_replaced(run: Callable[..., list[np.ndarray]], run_again: Callable[..., Any]) -> Iterator[None]:
    """The graphs' `run` and `run_again` (which `run_bound` runs through) replaced while the block lasts."""
    original = sessions._Graph.run, sessions._Graph.run_again
    sessions._Graph.run, sessions._Graph.run_again = run, run_again  # type: ignore[method-assign]
    try:
        yield
    finally:
        sessions._Graph.run, sessions._Graph.run_again = original  # type: ignore[method-assign]


def _recorded(record: Runs) -> AbstractContextManager[None]:
    """Every graph run's outputs appended to `record`, in order, while the block lasts."""
    run, run_again = sessions._Graph.run, sessions._Graph.run_again

    def recording(graph: sessions._Graph, *args: Any) -> list[np.ndarray]:
        outputs = run(graph, *args)
        record.append([o.copy() for o in outputs])
        return outputs

    def recording_again(graph: sessions._Graph, bound: Callable[..., Any]) -> Any:
        feeds = run_again(graph, bound)
        if feeds is not None:
            record.append([o.copy() for o in feeds.outputs.values()])
        return feeds

    return _runs_replaced(recording, recording_again)


def _replayed(queue: Runs) -> AbstractContextManager[None]:
    """Each graph run returns the next outputs of `queue` instead of running, a decoder step finding
    them in its binding's output arrays; the step still makes or updates its binding."""

    def replay_run(graph: sessions._Graph, *args: Any) -> list[np.ndarray]:
        return [o.copy() for o in queue.pop(0)]

    def replay_again(graph: sessions._Graph, bound: Callable[..., Any]) -> Any:
        held = bound(graph.wide)
        if held is None:
            return None
        feeds = held[1]
        for array, recorded in zip(feeds.outputs.values(), queue.pop(0), strict=True):
            np.copyto(array, recorded)
        return feeds

    return _runs_replaced(replay_run, replay_again)


def main() -> None:
    bench = RuntimeBench.from_command_line(__doc__, 40, rounds=30)
    args, sources, options, target = bench.args, bench.sources, bench.options, bench_target()
    for model_dir, translator in bench.translators():
        recordings: list[Runs] = []
        expected = []
        for text in sources:
            recordings.append([])
            with _recorded(recordings[-1]):
                expected.append(translator.translate([text], target, options))
        times = []
        for _ in range(args.rounds):
            for text, recording, translation in zip(sources, recordings, expected, strict=True):
                queue = list(recording)
                with _replayed(queue):
                    started = time.perf_counter()
                    replayed = translator.translate([text], target, options)
                    times.append(time.perf_counter() - started)
                if queue or replayed != translation:
                    sys.exit(f"host_replay: {text!r} replayed differently from its recording")
        row = {"model": model_dir.name, "beam": args.beam_size, "sentences": len(sources), "rounds": args.rounds,
               "host_ms_median": round(statistics.median(times) * 1e3, 3),
               "host_ms_mean": round(statistics.mean(times) * 1e3, 3)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
