"""BLEU of the runtime itself, per model directory and direction: `python bench/precision_bleu.py
--model runs/fp32 artifacts/default [--split val] [--beam-size 5] [--sentences 1000]`.

The same checkpoint exported at two precisions decodes differently only where its kernels do
(int8's integer products differ between CPUs with VNNI and without), so the comparison is run on
the CPU it is quoted for. Every direction of each model's manifest, on test2016 unless `--split`
names another held-out split of the benchmark config (`val` for choices that must not be made on
the test set); prints one JSON object per model and direction with the CPU's name, whether it has
VNNI, and `same_as_first`: the share of sentences whose best translation is the same text as the
first model's, which moves far less by chance than BLEU does; and where some differ, the BLEU of
this model's and of the first model's translations of those sentences alone, the BLEU difference
to the first model, and the p-value of sacreBLEU's paired bootstrap resampling of that difference
(1,000 resamples): the chance that a difference as large comes from which sentences a test set
holds. A difference of a tenth of a point with p far above 0.05 is the test set's noise, not the
precision's.

`--save DIR` writes each model's translations to DIR; a later run with `--baseline DIR` reads the
first model's from there rather than making them. So a run on an emulated CPU (docs/BENCHMARKS.md)
compares its int8 translations with the fp32 ones made natively, which would take it half an hour
a direction to make.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BENCH_SPLIT, bench_data, runtime_parser  # noqa: E402
from model import corpus  # noqa: E402
from model.evaluate import paired_bootstrap_p, score_translations  # noqa: E402
from service.runtime import native  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.sessions import cpu_has_vnni  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _saved_name(model_dir: Path, split: str, source: str, target: str) -> str:
    return f"{model_dir.name}.{split}.{source}-{target}.jsonl"


def _saved(path: Path, sentences: int, parser: argparse.ArgumentParser) -> list[str]:
    """Translations a --save run wrote, a JSON string a line: as many as this run translates, or an
    error naming the file."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    except OSError as exc:
        parser.error(f"--baseline: cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        parser.error(f"--baseline: {path} line {exc.lineno}: not a JSON string, as --save writes")
    if len(lines) != sentences:
        parser.error(f"--baseline: {path} holds {len(lines)} lines, where this run translates {sentences} sentences")
    if not all(isinstance(line, str) for line in lines):
        parser.error(f"--baseline: {path} holds JSON other than strings, where --save writes one string a line")
    return lines


def main() -> None:
    parser = runtime_parser(__doc__, 1000)
    parser.add_argument("--split", default=BENCH_SPLIT, help="held-out split of the benchmark config")
    parser.add_argument(
        "--directions",
        nargs="+",
        metavar="SRC-TGT",
        default=None,
        help="only these of each model's directions (default: all), e.g. fr-en",
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each model's translations to DIR/MODEL.SPLIT.SRC-TGT.jsonl",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="the first model's translations are read from DIR, where a --save run wrote them (on "
        "another CPU, or natively where this run is emulated), rather than made here",
    )
    args = parser.parse_args()
    data, data_dir = bench_data(), corpus.resolve_data_dir(args.data_dir)
    options = DecodeOptions(beam_size=args.beam_size)
    first: dict[tuple[str, str], list[str]] = {}  # the first model's best translations, by direction
    first_bleu: dict[tuple[str, str], float] = {}
    for index, model_dir in enumerate(args.model):
        translator = Translator.load(model_dir, args.threads)
        offered = [f"{source}-{target}" for source, target in translator.languages.directions]
        if missing := sorted(set(args.directions or []) - set(offered)):
            parser.error(f"--directions: {model_dir} has no {', '.join(missing)}; it has {', '.join(offered)}")
        read = index == 0 and args.baseline is not None
        for source, target in translator.languages.directions:
            if args.directions is not None and f"{source}-{target}" not in args.directions:
                continue
            sources, references = corpus.split_texts(data, data_dir, args.split, (source, target))
            sources, references = sources[: args.sentences], references[: args.sentences]
            started = time.perf_counter()
            if read:
                saved = args.baseline / _saved_name(model_dir, args.split, source, target)
                best = _saved(saved, len(sources), parser)
            else:
                best = [t[0].text for t in translator.translate(sources, target, options)]
            scores = score_translations(best, references, time.perf_counter() - started)
            if args.save is not None and not read:
                args.save.mkdir(parents=True, exist_ok=True)
                lines = "".join(json.dumps(text, ensure_ascii=False) + "\n" for text in best)
                (args.save / _saved_name(model_dir, args.split, source, target)).write_text(lines)
            ours = first.setdefault((source, target), best)
            baseline = first_bleu.setdefault((source, target), scores.bleu)
            same = sum(a == b for a, b in zip(best, ours, strict=True)) / len(best)
            differing = [i for i, (a, b) in enumerate(zip(best, ours, strict=True)) if a != b]
            on_differing = {}
            if differing:  # which model's translations score higher where the two disagree
                refs = [references[i] for i in differing]
                on_differing = {
                    "bleu_where_different": score_translations([best[i] for i in differing], refs, 0.0).bleu,
                    "first_bleu_where_different": score_translations([ours[i] for i in differing], refs, 0.0).bleu,
                    "bleu_difference": round(scores.bleu - baseline, 2),
                    "paired_bootstrap_p": round(paired_bootstrap_p(best, ours, references), 4),
                }
            made = (
                {"read_from": str(args.baseline)}
                if read
                else {"cpu": _cpu_name(), "vnni": cpu_has_vnni(), "int8_kernel": native.cpuid_kernel()}
            )
            row = {"model": str(model_dir), "precision": translator.model.manifest.precision,
                   "split": args.split, "direction": f"{source}-{target}", "sentences": len(sources),
                   "beam": args.beam_size, "bleu": scores.bleu, "chrf": scores.chrf,
                   "same_as_first": round(same, 3), **on_differing, **made}  # fmt: skip
            print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
