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

from bench.common import RuntimeBench  # noqa: E402


def main() -> None:
    bench = RuntimeBench.from_command_line(__doc__, 40)
    args, sources, options = bench.args, bench.sources, bench.options
    for model_dir, translator in bench.translators():
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
