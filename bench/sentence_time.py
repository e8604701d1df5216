"""Where one sentence's milliseconds go: `python bench/sentence_time.py [--model DIR] [--threads 2] [--rounds 3]`.

Each of the first --sentences test2016 sentences (40) is translated alone, as an idle server
translates a request of one sentence (the translator's whole path: splitting, tokenization,
search, detokenization), --rounds times over after a warm-up. The graphs' runs are timed where
they are called (onnxruntime's `run` for the encoder, `run_with_iobinding` for the decoder
steps; bench/graph_clock.py), so no profiler slows the host's work between them. Prints the
medians per sentence: the total, the encoder, the decoder steps (their number, and the mean time
of one), and what is left, the host's work (each a median of its own, so they need not add up to
the total's). The host's work is split three ways: before the first step (splitting,
tokenization, the encoder's inputs and outputs, the search's start: its cache, its output layer,
its first binding), between steps (the search proper; also per step: `host_per_step_ms`), and
after the last step (the hypotheses ranked, detokenization). What a sentence costs besides its
steps is the part that does not grow with its length (bench/step_slope.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RuntimeBench, bench_target  # noqa: E402
from bench.graph_clock import timed_runs  # noqa: E402


def main() -> None:
    bench = RuntimeBench.from_command_line(__doc__, 40, rounds=3)
    args, sources, options, target = bench.args, bench.sources, bench.options, bench_target()
    for model_dir, translator in bench.translators():
        for text in sources[:3]:
            translator.translate([text], target, options)
        rows: dict[str, list[float]] = {name: [] for name in ("total", "encoder", "decoder", "steps", "host",
                                                              "host_before", "host_between", "host_after")}  # fmt: skip
        per_step: list[float] = []
        with timed_runs() as (encoder, decoder):
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
                    before = decoder.first_start - started - encoder.seconds  # the encoder runs before the steps
                    after = started + total - decoder.last_end
                    between = decoder.last_end - decoder.first_start - decoder.seconds
                    rows["host_before"].append(before * 1000)
                    rows["host_between"].append(between * 1000)
                    rows["host_after"].append(after * 1000)
                    per_step.append(between * 1000 / max(decoder.calls - 1, 1))
        medians = {
            f"{name}_ms" if name != "steps" else name: round(statistics.median(v), 2) for name, v in rows.items()
        }
        step_ms = sum(rows["decoder"]) / max(sum(rows["steps"]), 1)
        print(json.dumps({"model": model_dir.name, "beam": args.beam_size, "threads": args.threads,
                          "sentences": len(sources), "rounds": args.rounds, **medians,
                          "decoder_step_ms": round(step_ms, 3),
                          "host_per_step_ms": round(statistics.median(per_step), 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
