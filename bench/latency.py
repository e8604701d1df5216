"""Single-sentence latency in process: `python bench/latency.py [--model DIR ...] [--beam-size 5]`.

Each of the first 40 test2016 English sentences is translated alone into French, as an idle
server would; prints one JSON object per model directory with p50 and mean milliseconds.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import english_test_sentences, runtime_parser  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def main() -> None:
    args = runtime_parser(__doc__, 40).parse_args()
    sources = english_test_sentences(args)
    options = DecodeOptions(beam_size=args.beam_size)
    for model_dir in args.model:
        translator = Translator.load(model_dir, args.threads)
        translator.translate(sources[:3], "fr", options)  # warm up
        times = []
        for sentence in sources:
            t0 = time.perf_counter()
            translator.translate([sentence], "fr", options)
            times.append((time.perf_counter() - t0) * 1000)
        row = {"model": model_dir.name, "beam": args.beam_size, "threads": args.threads, "sentences": len(times),
               "p50_ms": round(statistics.median(times), 1), "mean_ms": round(statistics.fmean(times), 1)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
