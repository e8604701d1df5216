"""Where one sentence's milliseconds go: `python bench/sentence_time.py [--model DIR] [--threads 2] [--rounds 3]`.

Each of the first --sentences test2016 sentences (40) is translated alone, as an idle server
translates a request of one sentence (the translator's whole path: splitting, tokenization,
search, detokenization), --rounds times over after a warm-up. The graphs' runs are timed where
they are called (onnxruntime's `run` for the encoder, `run_with_iobinding` for the decoder
steps), so no profiler slows the host's work between them. Prints the medians per sentence:
the total, the encoder, the decoder steps (their number, and the mean time of one), and what is
left, the host's work (each a median of its own, so they need not add up to the total's).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RuntimeBench, bench_target  # noqa: E402


class _Clock:
    """Seconds spent inside the timed calls, and how many there were, since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


@contextmanager
def _timed_runs() -> Iterator[tuple[_Clock, _Clock]]:
    """(encoder clock, decoder clock) over every session's runs while the block lasts."""
    encoder, decoder = _Clock(), _Clock()
    run, bound = ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding
    ort.InferenceSession.run = encoder.wrap(run)
    ort.InferenceSession.run_with_iobinding = decoder.wrap(bound)
    try:
        yield encoder, decoder
    finally:
        ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding = run, bound


def main() -> None:
    bench = RuntimeBench.from_command_line(__doc__, 40, rounds=3)
    args, sources, options, target = bench.args, bench.sources, bench.options, bench_target()
    for model_dir, translator in bench.translators():
        for text in sources[:3]:
            translator.translate([text], target, options)
        rows: dict[str, list[float]] = {"total": [], "encoder": [], "decoder": [], "steps": [], "host": []}
        with _timed_runs() as (encoder, decoder):
            for _ in range(args.rounds):
                for text in sources:
                    encoder.reset()
                    decoder.reset()
                    started = time.perf_counter()
                    translator.translate([text], target, options)
                    total = time.perf_counter() - started
                    rows["total"].append(total * 1000)
                    rows["encoder"].append(encoder.seconds * 1000)
                    rows["decoder"].append(decoder.seconds * 1000)
                    rows["steps"].append(decoder.calls)
                    rows["host"].append((total - encoder.seconds - decoder.seconds) * 1000)
        medians = {
            f"{name}_ms" if name != "steps" else name: round(statistics.median(v), 2) for name, v in rows.items()
        }
        step_ms = sum(rows["decoder"]) / max(sum(rows["steps"]), 1)
        print(json.dumps({"model": model_dir.name, "beam": args.beam_size, "threads": args.threads,
                          "sentences": len(sources), "rounds": args.rounds, **medians,
                          "decoder_step_ms": round(step_ms, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
