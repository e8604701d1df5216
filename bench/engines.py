"""Decoding engines side by side on one model: `python bench/engines.py [--beam-size 5] [--precision all] [--repeat 5]`.

Rows: PyTorch re-running the decoder over the whole prefix every step (the textbook
loop), PyTorch with the KV cache, this runtime (fp32, int8; `--activation-scales calibrated`
for int8 graphs with constant scales; `--shortlist N` for graphs with an output shortlist), and
CTranslate2 (fp32, int8) on the same weights.
Every engine gets the same sentences, threads, batch token budget, beam, length penalty and
maximum-length rule. `--streams N` (default: the threads) decodes N batches at a time, one
thread each: the runtime as `Translator.translate` does, and CTranslate2 with N replicas
(`inter_threads`) called from N threads; `--streams 1` decodes the batches in turn on every
thread (PyTorch always does). Each engine and precision runs in a worker process of its own,
which times its own decoding; all are loaded at once, and each decodes the first batch once and
then every batch `--warmup` times (2) before the rounds, as a server that has run a while would.
The engines run interleaved, `--repeat` rounds (bench/interleaved.py), one worker at a time while
the others wait on their input: one JSON object per engine and round, then one summary per
engine with its median tokens/s, min and max, and the median of its per-round ratios against
CTranslate2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Decode, DecodeAll, bench_data, bench_target, in_streams, runtime_streams, test_pairs  # noqa: E402
from bench.engine_workers import interleaved_rounds, serve, started, write_job  # noqa: E402
from bench.interleaved import summarize  # noqa: E402
from model import corpus  # noqa: E402
from model.artifacts import load_model_dir  # noqa: E402
from model.beam import beam_search as torch_beam_search  # noqa: E402
from model.evaluate import score_translations  # noqa: E402
from model.tokenizer import tag_id  # noqa: E402
from model.transformer import KV, Transformer  # noqa: E402
from service import conventions as cv  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.translator import DEFAULT_BATCH_TOKENS, Translator, batches_by_length  # noqa: E402


class TextbookDecoder(torch.nn.Module):
    """The model behind the beam search's interface, without a cache: every step re-runs the whole prefix.

    The "past" it hands back is the prefix itself, so the beam search reorders it like a cache.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def encode(self, src: Tensor, mask: Tensor) -> Tensor:
        return self.model.encode(src, mask)

    def cross_kv(self, memory: Tensor) -> list[KV]:
        return self.model.cross_kv(memory)

    def decode_step(
        self, tgt: Tensor, src_mask: Tensor, cross: list[KV], past: list[KV] | None = None
    ) -> tuple[Tensor, list[KV]]:
        prefix = tgt if past is None else torch.cat((past[0][0], tgt), dim=1)
        logits, _ = self.model.decode_step(prefix, src_mask, cross, None)
        return logits[:, -1:], [(prefix, prefix)]


def scored_row(
    name: str, precision: str, beam: int, seconds: float, outputs: list[list[int]],
    detok: Callable[[list[int]], str], references: list[str],
) -> dict[str, object]:  # fmt: skip
    """One engine's round: its speed over the target tokens it wrote, and its BLEU."""
    hyps = [detok(t) for t in outputs]
    target_tokens = sum(len(t) + 1 for t in outputs)
    bleu = score_translations(hyps, references, seconds).bleu
    return {
        "engine": name, "precision": precision, "beam": beam, "sentences": len(outputs),
        "seconds": round(seconds, 2), "tok_per_s": round(target_tokens / seconds, 1),
        "sent_per_s": round(len(outputs) / seconds, 2), "bleu": bleu,
    }  # fmt: skip


def _imported(argv: list[str]) -> bool:
    """Whether --model names an imported (Marian) model directory: bench/marian_engines.py benchmarks those."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", type=Path)
    model = pre.parse_known_args(argv)[0].model
    manifest = model / "manifest.json" if model else None
    return bool(manifest and manifest.is_file() and json.loads(manifest.read_text()).get("origin") == "marian")


# The engines' names in the output, by their names in --engines.
ROW_NAMES = {"textbook": "pytorch-textbook", "torch": "pytorch-kv-cache", "runtime": "mtserve-onnx",
             "ctranslate2": "ctranslate2"}  # fmt: skip


def main() -> None:
    if _imported(sys.argv[1:]):
        from bench.marian_engines import main as marian_main

        marian_main()
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--beam-size", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--precision", choices=["fp32", "int8", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=0, help="batches decoded at once (default: the threads)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--limit", type=int, default=0, help="first N test2016 sentences (default: all 1000)")
    parser.add_argument("--engines", nargs="+", choices=list(ROW_NAMES), default=list(ROW_NAMES))
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds of all engines")
    parser.add_argument("--warmup", type=int, default=2, help="passes over every batch before the rounds")
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--activation-scales", choices=["row", "calibrated"], default="row", help="this runtime's int8 graphs"
    )
    parser.add_argument("--shortlist", type=int, default=0, help="this runtime's graphs with an output shortlist of N")
    parser.add_argument("--work", type=Path, help="where the graphs and conversions go (default: a new directory)")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "PRECISION", "BEAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.streams = args.streams or args.threads
    if args.worker:
        engine, precision, beam = args.worker
        torch.set_num_threads(args.threads)
        serve(args.work, _engine(args, engine, precision, int(beam)))
        return

    precisions = ["fp32", "int8"] if args.precision == "all" else [args.precision]
    sources_text, references = test_pairs(args.data_dir)
    if args.limit:
        sources_text, references = sources_text[: args.limit], references[: args.limit]
    _, sp = load_model_dir(args.model)
    sources = [[*ids, cv.EOS_ID] for ids in sp.encode(sources_text)]
    args.work = args.work or Path(tempfile.mkdtemp(prefix="mtserve-bench-"))
    args.work.mkdir(parents=True, exist_ok=True)
    if "runtime" in args.engines:
        for p in precisions:
            _export(args, p)
    if "ctranslate2" in args.engines:
        from bench.ct2_convert import convert

        for p in precisions:
            convert(args.model, args.work / f"ct2-{p}", None if p == "fp32" else "int8")
    # The batches decoding at once share the token budget, as Translator.translate's do; every
    # engine decodes the same ones.
    groups = batches_by_length([len(s) for s in sources], args.batch_tokens, args.streams)
    write_job(args.work, sources, groups, args.warmup)

    for beam in args.beam_size:
        configs = [(engine, p) for engine in args.engines for p in (precisions if engine in ("runtime", "ctranslate2")
                                                                     else ["fp32"])]  # fmt: skip
        results = []
        with started({config: _worker_command(args, *config, beam) for config in configs}) as workers:
            for round_index, ran in interleaved_rounds(workers, args.repeat):
                for (engine, precision), (seconds, outputs) in ran.items():
                    row = scored_row(ROW_NAMES[engine], precision, beam, seconds, outputs, sp.decode, references)
                    results.append({**row, "round": round_index})
                    print(json.dumps(results[-1]), flush=True)
        for summary in summarize(results):
            print(json.dumps(summary), flush=True)


def _export(args: argparse.Namespace, precision: str) -> None:
    """The checkpoint's graphs at `precision` in the work directory, exported afresh whatever graphs
    the model directory holds: as `mtserve export --quantize int8` does, weights rounded against
    calibration activations, and with --activation-scales calibrated constant activation scales too."""
    from export.calibrate import CALIBRATION_PAIRS
    from export.exporter import export_model

    data_dir = corpus.resolve_data_dir(args.data_dir)
    data = bench_data()
    held = corpus.held_sentences(data, data_dir)
    text = [sentence for _, sentence in corpus.monolingual_sentences(data, data_dir, held)]
    calibration = corpus.first_pairs_by_language(data, data_dir, held, CALIBRATION_PAIRS)
    sources_text, _ = test_pairs(args.data_dir)
    export_model(args.model, args.work / precision, text, precision, sources_text[:200],
                 calibration_text=calibration, constant_scales=args.activation_scales == "calibrated")  # fmt: skip
    if args.shortlist:
        from export.shortlist import config_pairs, shortlist_from_text

        shortlist_from_text(args.work / precision, config_pairs(data, data_dir), args.shortlist)


def _worker_command(args: argparse.Namespace, engine: str, precision: str, beam: int) -> list[str]:
    """This script as the worker of one engine at one precision and beam (bench/engine_workers.py)."""
    return [sys.executable, __file__, "--model", str(args.model), "--work", str(args.work),
            "--threads", str(args.threads), "--streams", str(args.streams),
            "--batch-tokens", str(args.batch_tokens), "--worker", engine, precision, str(beam)]  # fmt: skip


def _engine(args: argparse.Namespace, engine: str, precision: str, beam: int) -> DecodeAll:
    """What decodes every batch for one engine: PyTorch in turn on every thread; the runtime and
    CTranslate2 `--streams` batches at a time."""
    model, sp = load_model_dir(args.model)
    tag = tag_id(sp, bench_target())
    if engine == "textbook":
        textbook = TextbookDecoder(model)
        return in_streams(lambda b: _torch(textbook, b, tag, beam), 1)
    if engine == "torch":
        return in_streams(lambda b: _torch(model, b, tag, beam), 1)
    if engine == "runtime":
        translator = Translator.load(args.work / precision, args.threads, args.batch_tokens)
        return runtime_streams(translator, bench_target(), DecodeOptions(beam_size=beam), args.streams)
    return in_streams(_ct2(args.work / f"ct2-{precision}", sp, args.threads, beam, args.streams), args.streams)


def _torch(model: torch.nn.Module, batch: list[list[int]], tag: int, beam: int) -> list[list[int]]:
    with torch.no_grad():
        return [h[0].tokens for h in torch_beam_search(model, batch, tag, beam_size=beam)]  # type: ignore[arg-type]


def _ct2(model_dir: Path, sp: object, threads: int, beam: int, streams: int = 1) -> Decode:
    """CTranslate2 on `threads` threads: one replica on all of them, or `streams` of them on as many
    threads each as divide evenly."""
    import ctranslate2

    translator = ctranslate2.Translator(
        str(model_dir), device="cpu", intra_threads=max(1, threads // streams), inter_threads=streams
    )
    piece = sp.id_to_piece  # type: ignore[attr-defined]
    to_id = sp.piece_to_id  # type: ignore[attr-defined]

    def decode(batch: list[list[int]]) -> list[list[int]]:
        # The shared maximum-length rule, applied to the batch's longest source.
        limit = cv.max_target_length(max(len(s) for s in batch))
        results = translator.translate_batch(
            [[piece(i) for i in s] for s in batch],
            target_prefix=[["<2fr>"]] * len(batch),
            beam_size=beam,
            length_penalty=1.0,
            max_decoding_length=limit + 1,  # CTranslate2 counts the prefix token
        )
        return [[to_id(t) for t in r.hypotheses[0] if t != "<2fr>"] for r in results]

    return decode


if __name__ == "__main__":
    main()
