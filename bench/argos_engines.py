"""mtserve against CTranslate2 on a model of the Argos shape, with argostranslate's options.

The shape argos-train trains: 6+6 layers, d_model 512, 8 heads, ff 2048, ReLU, pre-norm, a stored
sinusoid table, one shared vocabulary of 50,000 pieces, tied embeddings. The weights are random
(seeded; embeddings wide enough that few steps are near-ties), written as CTranslate2 writes
OpenNMT-py models (bench/ct2_convert.py), at float32 and at int8 as argos-train ships them.
mtserve imports each with `mtserve import ctranslate2` (the int8 package with its own int8
quantizer, `--quantize int8`). Both engines get the same test2016 sources as the same pieces
(the committed model's SentencePiece ids), the same threads, beam, length penalty 0.2 and one
fixed length limit (random weights rarely end a sentence), in interleaved rounds, each engine
and precision in a worker process of its own (bench/engine_workers.py); `--streams N`
(default: the threads) decodes N batches at a time, one thread each, mtserve as
`Translator.translate` does and CTranslate2 on N replicas, and `--streams 1` one batch after the
other on every thread, as argostranslate's single call runs. Rows report the
sentences both decode to the same tokens; `--memory` gives each engine's proportional set size in
its own process, once loaded and after 100 sentences at beam 4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402

from bench.common import Decode, DecodeAll, in_streams, runtime_streams, test_pairs  # noqa: E402
from bench.ct2_convert import build_spec  # noqa: E402
from bench.engine_workers import agreements, interleaved_rounds, serve, started, write_job  # noqa: E402
from bench.interleaved import summarize  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from service import conventions as cv  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.sessions import IDLE_RELEASE_S  # noqa: E402
from service.runtime.translator import DEFAULT_BATCH_TOKENS, Translator, batches_by_length  # noqa: E402

VOCAB = 50_000
TAG = "<2xx>"
SHAPE = {"vocab_size": VOCAB, "d_model": 512, "n_heads": 8, "d_ff": 2048, "encoder_layers": 6, "decoder_layers": 6,
         "max_positions": 5000, "activation": "relu", "pre_norm": True, "mlm_head": False, "dropout": 0.0}  # fmt: skip


def pieces() -> list[str]:
    names = {
        cv.PAD_ID: "<blank>",
        cv.UNK_ID: "<unk>",
        cv.BOS_ID: "<s>",
        cv.EOS_ID: "</s>",
        cv.FIRST_LANGUAGE_TAG_ID: TAG,
    }
    return [names.get(i, f"t{i}") for i in range(VOCAB)]


def write_ct2(out: Path, quantization: str | None, seed: int = 0, **shape: object) -> Path:
    """The Argos-shape model (or another: `shape` overrides its sizes) with random weights, as
    CTranslate2 stores an OpenNMT-py model."""
    import ctranslate2

    torch.manual_seed(seed)
    config = ModelConfig(**(SHAPE | shape))  # type: ignore[arg-type]
    model = Transformer(config)
    with torch.no_grad():
        model.embed.weight.normal_(0.0, 0.2)  # wider than the init: distinct logits, few ties
    spec = build_spec(model, pieces()[: config.vocab_size], source_eos=True)
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    ctranslate2.Translator(str(out), device="cpu")
    return out


def _pss_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sources(data_dir: str | None, limit: int) -> list[list[int]]:
    sp = spm.SentencePieceProcessor(model_file=str(DEFAULT_MODEL_DIR / "spm.model"))
    texts = test_pairs(data_dir)[0][: limit or None]
    return [[*ids, cv.EOS_ID] for ids in sp.encode(texts)]


def _ct2(directory: Path, threads: int, options: DecodeOptions, streams: int = 1) -> Decode:
    """argostranslate's call: pieces, the target prefix, beam, length penalty, the replacement of
    unknown tokens and the hypotheses' scores, which argostranslate reads (and here one fixed limit).
    Without scores CTranslate2's greedy search would skip the softmax."""
    import ctranslate2

    names = pieces()
    ids = {p: i for i, p in enumerate(names)}
    translator = ctranslate2.Translator(
        str(directory), device="cpu", intra_threads=max(1, threads // streams), inter_threads=streams
    )

    def decode(batch: list[list[int]]) -> list[list[int]]:
        results = translator.translate_batch(
            [[names[i] for i in s] for s in batch], target_prefix=[[TAG]] * len(batch),
            beam_size=options.beam_size, length_penalty=options.length_penalty,
            max_decoding_length=options.max_length, replace_unknowns=True, return_scores=True,
        )  # fmt: skip
        return [[ids[t] for t in r.hypotheses[0]] for r in results]

    return decode


def _options(beam: int, max_length: int) -> DecodeOptions:
    return DecodeOptions(beam_size=beam, length_penalty=0.2, max_length=max_length, min_length=1,
                         proportional_limit=False, repetition_guard=False, cut_degenerate=False,
                         replace_unknowns=True)  # fmt: skip


def _runtime(translator: Translator, options: DecodeOptions) -> Decode:
    """The service's path from source ids: the target's start and prefix, and each source's span
    for replacing unknown tokens, which argostranslate asks of CTranslate2."""
    target = translator.languages.directions[0][1]

    def decode(batch: list[list[int]]) -> list[list[int]]:
        return [h[0].tokens for h in translator.search(batch, [target] * len(batch), options)]

    return decode


def prepare(work: Path) -> dict[tuple[str, str], Path]:
    """CTranslate2 directories and mtserve imports, by (engine, precision)."""
    from export.ctranslate2 import import_ctranslate2

    dirs: dict[tuple[str, str], Path] = {}
    spm_file = DEFAULT_MODEL_DIR / "spm.model"  # the import needs one; the benchmark feeds ids
    for precision, quantization in (("fp32", None), ("int8", "int8")):
        ct2, ours = work / f"ct2-{precision}", work / precision
        if not (ct2 / "model.bin").is_file():  # a --work directory of an earlier run is reused
            write_ct2(ct2, quantization)
        if not (ours / "manifest.json").is_file():
            started = time.perf_counter()
            import_ctranslate2(ct2, ours, "en", "xx", spm_file, target_prefix=TAG, precision=precision)
            print(json.dumps({"import": precision, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        dirs[("ctranslate2", precision)], dirs[("mtserve-onnx", precision)] = ct2, ours
    return dirs


def measure(engine: str, directory: Path, args: argparse.Namespace) -> None:
    """In a fresh process: load one engine, translate 100 sentences at beam 4, print its PSS."""
    sources = _sources(args.data_dir, 100)
    if engine != "ctranslate2":
        Translator.load(directory, args.threads)  # the graphs' packed copies, made once per machine
    baseline = _pss_mb()
    options = _options(4, args.max_length)
    decode: Decode
    if engine == "ctranslate2":
        decode = _ct2(directory, args.threads, options)
    else:
        decode = _runtime(Translator.load(directory, args.threads, args.batch_tokens), options)
    loaded = _pss_mb()
    for i in range(0, len(sources), 20):
        decode(sources[i : i + 20])
    time.sleep(2 * IDLE_RELEASE_S)  # what the batches took goes back once the model idles
    print(json.dumps({"engine": engine, "dir": directory.name, "loaded_pss_mb": round(loaded - baseline, 1),
                      "after_100_sentences_pss_mb": round(_pss_mb() - baseline, 1)}), flush=True)  # fmt: skip


def run(args: argparse.Namespace) -> None:
    work = args.work or Path(tempfile.mkdtemp(prefix="mtserve-argos-bench-"))
    dirs = prepare(work)
    if args.memory:
        for (engine, _), directory in dirs.items():
            name = "runtime" if engine == "mtserve-onnx" else engine
            command = [sys.executable, __file__, "--measure", name, str(directory),
                       "--threads", str(args.threads), "--max-length", str(args.max_length)]  # fmt: skip
            subprocess.run(command, check=True)
        return
    sources = _sources(args.data_dir, args.limit)
    # The batches decoding at once share the token budget, as Translator.translate's do.
    write_job(work, sources, batches_by_length([len(s) for s in sources], args.batch_tokens, args.streams), args.warmup)
    rows = []
    for beam in args.beam_size:
        commands = {key: _worker_command(args, work, key[0], directory, beam) for key, directory in dirs.items()}
        with started(commands) as workers:
            for round_index, ran in interleaved_rounds(workers, args.repeat):
                for key, (seconds, out) in ran.items():
                    row = {"engine": key[0], "precision": key[1], "beam": beam, "round": round_index,
                           "sentences": len(sources), "seconds": round(seconds, 2),
                           "tok_per_s": round(sum(len(t) + 1 for t in out) / seconds, 1)}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                for precision, same in agreements(ran, ("fp32", "int8")):
                    print(json.dumps({"compare": precision, "beam": beam, "round": round_index,
                                      "same_tokens": same, "sentences": len(sources)}), flush=True)  # fmt: skip
    for summary in summarize(rows):
        print(json.dumps(summary), flush=True)


def _worker_command(args: argparse.Namespace, work: Path, engine: str, directory: Path, beam: int) -> list[str]:
    """This script as the worker of one engine on one model directory at one beam (bench/engine_workers.py)."""
    return [sys.executable, __file__, "--worker", engine, str(directory), str(beam), "--work", str(work),
            "--threads", str(args.threads), "--streams", str(args.streams), "--batch-tokens", str(args.batch_tokens),
            "--max-length", str(args.max_length)]  # fmt: skip


def _engine(args: argparse.Namespace, engine: str, directory: Path, beam: int) -> DecodeAll:
    """What decodes every batch for one engine, `--streams` batches at a time."""
    options = _options(beam, args.max_length)
    if engine == "ctranslate2":
        return in_streams(_ct2(directory, args.threads, options, args.streams), args.streams)
    loaded = Translator.load(directory, args.threads, args.batch_tokens)
    return runtime_streams(loaded, loaded.languages.directions[0][1], options, args.streams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beam-size", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=0, help="batches decoded at once (default: the threads)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--max-length", type=int, default=32, help="target tokens per sentence, EOS included")
    parser.add_argument("--limit", type=int, default=200, help="first N test2016 sentences (0: all 1000)")
    parser.add_argument("--repeat", "--rounds", type=int, default=3, help="interleaved rounds of all engines")
    parser.add_argument("--warmup", type=int, default=2, help="passes over every batch before the rounds")
    parser.add_argument("--work", type=Path, help="where the models are written (default: a temporary directory)")
    parser.add_argument("--data-dir")
    parser.add_argument("--memory", action="store_true", help="each engine's PSS, each in its own process")
    parser.add_argument("--measure", nargs=2, metavar=("ENGINE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "DIR", "BEAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.streams = args.streams or args.threads
    if args.worker:
        engine, directory, beam = args.worker
        serve(args.work, _engine(args, engine, Path(directory), int(beam)))
    elif args.measure:
        measure(args.measure[0], Path(args.measure[1]), args)
    else:
        run(args)


if __name__ == "__main__":
    main()
