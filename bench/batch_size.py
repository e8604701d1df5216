"""What a sentence costs by the size of its batch: `python bench/batch_size.py [--model DIR]
[--sizes 1 2 4 8 16 32] [--threads 1] [--beam-size 4] [--sentences 96] [--rounds 3]`.

The first --sentences test2016 English sentences are translated into French in batches of each
size, in the order they come (as a server's queue gives them, not sorted by length), one batch
after another on --threads threads. Each round takes the sizes in turn, the order reversed every
round, so that every size sees the same load of a shared machine. Prints per model directory and
size the median over the rounds of milliseconds a sentence and sentences a second.

A server under many clients batches what its queue holds: this says how much a bigger batch
saves per sentence, and so what the service could reach with a given number of clients
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_target, english_test_sentences, runtime_parser  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def main() -> None:
    parser = runtime_parser(__doc__, 96)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.set_defaults(threads=1, beam_size=4)
    args = parser.parse_args()
    sources, options, target = english_test_sentences(args), DecodeOptions(beam_size=args.beam_size), bench_target()
    for model_dir in args.model:
        translator = Translator.load(model_dir, args.threads)
        translator.translate(sources[:8], target, options)  # warm up
        per_sentence: dict[int, list[float]] = {size: [] for size in args.sizes}
        for round_index in range(args.rounds):
            for size in args.sizes if round_index % 2 == 0 else args.sizes[::-1]:
                started = time.perf_counter()
                for start in range(0, len(sources), size):
                    translator.translate(sources[start : start + size], target, options)
                per_sentence[size].append((time.perf_counter() - started) * 1000 / len(sources))
        for size, times in per_sentence.items():
            ms = statistics.median(times)
            row = {"model": model_dir.name, "batch": size, "beam": args.beam_size, "threads": args.threads,
                   "ms_per_sentence": round(ms, 2), "sentences_per_s": round(1000 / ms, 1),
                   "rounds_ms": [round(t, 2) for t in times]}  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
