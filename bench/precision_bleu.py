"""BLEU of the runtime itself, per model directory and direction: `python bench/precision_bleu.py
--model runs/fp32 artifacts/default [--split val] [--beam-size 5] [--sentences 1000]`.

The same checkpoint exported at two precisions decodes differently only where its kernels do
(int8's integer products differ between CPUs with VNNI and without), so the comparison is run on
the CPU it is quoted for. Every direction of each model's manifest, on test2016 unless `--split`
names another held-out split of the benchmark config (`val` for choices that must not be made on
the test set); prints one JSON object per model and direction with the CPU's name, whether it has
VNNI, and `same_as_first`: the share of sentences whose best translation is the same text as the
first model's, which moves far less by chance than BLEU does; and where some differ, the BLEU of
this model's and of the first model's translations of those sentences alone.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BENCH_SPLIT, bench_data, runtime_parser  # noqa: E402
from model import corpus  # noqa: E402
from model.evaluate import score_translations  # noqa: E402
from service.runtime import native  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.sessions import cpu_has_vnni  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = runtime_parser(__doc__, 1000)
    parser.add_argument("--split", default=BENCH_SPLIT, help="held-out split of the benchmark config")
    args = parser.parse_args()
    data, data_dir = bench_data(), corpus.resolve_data_dir(args.data_dir)
    options = DecodeOptions(beam_size=args.beam_size)
    first: dict[tuple[str, str], list[str]] = {}  # the first model's best translations, by direction
    for model_dir in args.model:
        translator = Translator.load(model_dir, args.threads)
        for source, target in translator.languages.directions:
            sources, references = corpus.split_texts(data, data_dir, args.split, (source, target))
            sources, references = sources[: args.sentences], references[: args.sentences]
            started = time.perf_counter()
            best = [t[0].text for t in translator.translate(sources, target, options)]
            scores = score_translations(best, references, time.perf_counter() - started)
            ours = first.setdefault((source, target), best)
            same = sum(a == b for a, b in zip(best, ours, strict=True)) / len(best)
            differing = [i for i, (a, b) in enumerate(zip(best, ours, strict=True)) if a != b]
            on_differing = {}
            if differing:  # which model's translations score higher where the two disagree
                refs = [references[i] for i in differing]
                on_differing = {
                    "bleu_where_different": score_translations([best[i] for i in differing], refs, 0.0).bleu,
                    "first_bleu_where_different": score_translations([ours[i] for i in differing], refs, 0.0).bleu,
                }
            row = {"model": str(model_dir), "precision": translator.model.manifest.precision,
                   "split": args.split, "direction": f"{source}-{target}", "sentences": len(sources),
                   "beam": args.beam_size, "bleu": scores.bleu, "chrf": scores.chrf,
                   "same_as_first": round(same, 3), **on_differing,
                   "cpu": _cpu_name(), "vnni": cpu_has_vnni(), "int8_kernel": native.cpuid_kernel()}  # fmt: skip
            print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
