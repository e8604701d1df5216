"""A shortlisted int8 model's output projection on the host against the graph's, in one process:
`python bench/host_projection.py --model DIR [--batch 1 8] [--rounds 8] [--threads 1] [--kernel K]
[--host-sentences N] [--against-kernel K2]`.

DIR is an int8 model with a shortlist (`mtserve shortlist`). Two translators of it are loaded: one
as the runtime loads it, which makes the projection of batches of up to --host-sentences sentences
itself (service/runtime/projection.py; default the runtime's for the kernel), with --kernel (0
plain C, 1 AVX2, 2 AVX-VNNI, 3 AVX-512 VNNI, 4 AMX; default the widest the CPU runs); the other with
the graph's projection for every batch (MTSERVE_HOST_PROJECTION=off), or with --against-kernel, the
host's with that kernel (the "graph" side of the output). For each --batch size, the first
--sentences test2016 sentences are translated in batches of that size, the two translators
alternated round by round (the order reversed every round) on a search held to --threads threads.
Prints per batch size each side's median milliseconds per batch over the rounds, the median of the
per-round ratios host / graph, and whether the two gave the same translations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_target, english_test_sentences  # noqa: E402
from service.runtime import projection  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def _batch_ms(translator: Translator, sources: list[str], batch: int, target: str, options: DecodeOptions) -> tuple[
    float, list[str]
]:  # fmt: skip
    """The median milliseconds of a batch of `batch` sentences over `sources`, and the translations."""
    times, texts = [], []
    for start in range(0, len(sources), batch):
        began = time.perf_counter()
        out = translator.translate(sources[start : start + batch], target, options)
        times.append((time.perf_counter() - began) * 1e3)
        texts += [hyps[0].text for hyps in out]
    return statistics.median(times), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory with a shortlist")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="sentences a batch")
    parser.add_argument("--sentences", type=int, default=40, help="first N test2016 sentences")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="threads a search is held to")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--kernel", type=int, help="the host's kernel (default: the widest the CPU runs)")
    parser.add_argument("--host-sentences", type=int,
                        help="the most sentences a batch may have for its projection on the host (default: the "
                        "runtime's for the kernel)")  # fmt: skip
    parser.add_argument("--against-kernel", type=int,
                        help="the other side takes the host's projection too, with this kernel, instead of the "
                        "graph's")  # fmt: skip
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    host, graph = Translator.load(args.model, args.threads), Translator.load(args.model, args.threads)
    made = host.model.host_projection
    if made is None:
        raise SystemExit(f"{args.model}: its step gives no quantized rows (an int8 model with `mtserve shortlist`)")
    kernel = made.kernel if args.kernel is None else args.kernel
    sentences = projection.HOST_SENTENCES.get(kernel, 0) if args.host_sentences is None else args.host_sentences
    host.model.host_projection = dataclasses.replace(made, kernel=kernel, max_sentences=sentences)
    graph.model.host_projection = (
        None
        if args.against_kernel is None
        else dataclasses.replace(made, kernel=args.against_kernel, max_sentences=sentences)
    )
    for translator in (host, graph):
        translator.model.small_searches_narrow = True  # both alike, whatever each measured at load
    sources, target = english_test_sentences(args), bench_target()
    options = DecodeOptions(beam_size=args.beam_size)
    sides = {"host": host, "graph": graph}
    for translator in sides.values():
        _batch_ms(translator, sources[:5], 1, target, options)
    for batch in args.batch:
        ms: dict[str, list[float]] = {name: [] for name in sides}
        texts: dict[str, list[str]] = {}
        for round_ in range(args.rounds):
            for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
                median, texts[name] = _batch_ms(sides[name], sources, batch, target, options)
                ms[name].append(median)
        row = {
            "batch": batch,
            "kernel": kernel,
            "host_sentences": sentences,
            "against": "graph" if args.against_kernel is None else f"kernel {args.against_kernel}",
            **{f"{name}_ms": round(statistics.median(values), 3) for name, values in ms.items()},
            "ratio": round(statistics.median(a / b for a, b in zip(ms["host"], ms["graph"], strict=True)), 3),
            "rounds": {name: [round(v, 3) for v in values] for name, values in ms.items()},
            "same_translations": texts["host"] == texts["graph"],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
