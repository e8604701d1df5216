"""`mtserve translate`, `mtserve fill` and `mtserve bench`: the runtime from the command line, no torch."""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from service.languages import ModelLanguages, UnsupportedDirection
from service.manifest import DEFAULT_MODEL_DIR


@contextlib.contextmanager
def translation_progress(
    total: int, unit: str, description: str | None = None, hidden_up_to: int = 0
) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback (Translator.translate's, or any long count of `unit`s), shown
    on stderr: live on a terminal, into a log (not a terminal) a line every 30 s, so long jobs show it
    too; nothing for `hidden_up_to` or fewer."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    with tqdm(total=total, disable=total <= hidden_up_to, unit=unit, desc=description, file=sys.stderr,
              mininterval=0.1 if tty else 30.0, ascii=not tty) as bar:  # fmt: skip

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield advance


def _languages(args: argparse.Namespace, languages: ModelLanguages) -> tuple[str | None, str]:
    """--source and --target checked against the model; the target defaults from its directions."""
    source, target = args.source, args.target
    try:
        if source is not None:
            languages.require(source)
        target = languages.require(target) if target is not None else languages.default_target(source)
        if source == target:
            sys.exit(f"--source and --target are both {target!r}")
        if source is not None:
            languages.check(source, target)
        elif not languages.sources(target):
            raise UnsupportedDirection("*", target, languages.directions)
    except ValueError as exc:
        sys.exit(f"mtserve: {exc}")
    return source, target


def _options(args: argparse.Namespace, generation: Any) -> Any:
    from service.runtime.beam import DecodeOptions, guard_override

    try:
        if args.beam_size is not None and args.n_best > args.beam_size:
            raise ValueError(f"n_best must lie in 1..beam_size ({args.beam_size}), got {args.n_best}")
        return DecodeOptions.from_generation(
            generation, args.n_best, args.beam_size, args.length_penalty,
            repetition_guard=guard_override(args.repetition_guard),
        )  # fmt: skip
    except ValueError as exc:
        sys.exit(f"mtserve: {exc}")


def _translate(args: argparse.Namespace) -> int:
    from service.runtime.translator import Translator

    translator = Translator.load(args.model, args.threads, args.batch_tokens)
    _, target = _languages(args, translator.languages)
    options = _options(args, translator.model.manifest.generation)
    lines = [line.rstrip("\n") for line in sys.stdin]
    with translation_progress(len(lines), "segment", hidden_up_to=20) as advance:
        results = translator.translate(lines, target, options, progress=advance)
    for hyps in results:
        if args.n_best > 1:
            sys.stdout.write("\t".join(f"{h.text}\t{h.score:.4f}" for h in hyps) + "\n")
        else:
            sys.stdout.write(hyps[0].text + "\n")
    return 0


def _fill(args: argparse.Namespace) -> int:
    from service.runtime.fill_mask import FillMask, FillMaskError
    from service.runtime.sessions import OnnxModel

    model = OnnxModel(args.model, args.threads)
    if not model.manifest.has_mlm_head:
        sys.exit(f"mtserve fill: {args.model} has no masked-LM head (imported models have none)")
    filler = FillMask.from_model(model)
    try:
        results = filler.fill(args.text, top_k=args.top_k, targets=args.targets)
    except FillMaskError as exc:
        sys.exit(f"mtserve fill: {exc}")
    rows = [[c.as_dict() for c in row] for row in results]
    print(json.dumps(rows[0] if len(rows) == 1 else rows, ensure_ascii=False, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

    from service.runtime.translator import Translator

    translator = Translator.load(args.model, args.threads, args.batch_tokens)
    _, target = _languages(args, translator.languages)
    options = _options(args, translator.model.manifest.generation)
    lines = [line.rstrip("\n") for line in args.input.read_text().splitlines()]
    translator.translate(lines[:8], target, options)  # warm-up
    # Batches run side by side, one per thread (Translator.search_batches): what is timed is the
    # interval between one batch's end and the next's, not one batch's whole run.
    intervals: list[float] = []
    last = time.perf_counter()

    def tick(_done: int, _total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        intervals.append(now - last)
        last = now

    start = last = time.perf_counter()
    results = translator.translate(lines, target, options, progress=tick)
    seconds = time.perf_counter() - start
    target_tokens = sum(h[0].target_tokens for h in results)
    print(
        json.dumps(
            {
                "sentences": len(lines),
                "seconds": round(seconds, 3),
                "sent_per_s": round(len(lines) / seconds, 2),
                "tok_per_s": round(target_tokens / seconds, 1),
                "batches": len(intervals),
                "batch_interval_p50_ms": round(float(np.percentile(intervals, 50)) * 1000, 1),
                "batch_interval_p95_ms": round(float(np.percentile(intervals, 95)) * 1000, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "beam": options.beam_size,
                "threads": translator.model.threads,
                "batch_tokens": args.batch_tokens,
            }
        )
    )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="exported model directory")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")


def _decoding(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="source language, checked against the model's directions")
    parser.add_argument(
        "--target", help="target language (default: the only one from --source, else the model's first direction's)"
    )
    parser.add_argument("--beam-size", type=int, help="default: the model's (5 for mtserve's own)")
    parser.add_argument("--n-best", type=int, default=1)
    parser.add_argument("--length-penalty", type=float, help="default: the model's (1.0 for mtserve's own)")
    parser.add_argument(
        "--batch-tokens", type=int, default=2048, help="source tokens of the batches decoding at once (one per thread)"
    )
    parser.add_argument(
        "--repetition-guard",
        choices=["model", "on", "off"],
        default="model",
        help="stop runaway repeats and cut degenerate output (default: the model's own setting)",
    )


def register(sub: Any) -> None:
    translate = sub.add_parser("translate", help="translate stdin to stdout, one sentence per line")
    _common(translate)
    _decoding(translate)
    translate.set_defaults(handler=_translate)

    fill = sub.add_parser("fill", help="fill <mask> words")
    _common(fill)
    fill.add_argument("text", help='text with one or more <mask>, e.g. "A man is <mask> a guitar."')
    fill.add_argument("--top-k", type=int, default=5)
    fill.add_argument("--targets", nargs="+", help="restrict candidates to these words")
    fill.set_defaults(handler=_fill)

    bench = sub.add_parser("bench", help="throughput and latency of the runtime on a file")
    _common(bench)
    _decoding(bench)
    bench.add_argument("--input", type=Path, required=True, help="one sentence per line")
    bench.set_defaults(handler=_bench)
