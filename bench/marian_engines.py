"""mtserve against CTranslate2 on one imported Marian model (bench/engines.py --model IMPORTED_DIR).

The Hugging Face directory the model was imported from (its export report records it, or
`--hf-dir`) is imported afresh by mtserve for each precision and converted by CTranslate2's own
`ct2-transformers-converter`. Both engines get the same test2016 sources as the same pieces,
the same threads, beam, length penalty and maximum length (a fixed limit: random weights rarely
end a sentence, and CTranslate2 takes one limit per batch), no repetition guard, and CTranslate2's
rules (a sentence ends once K hypotheses have; at the limit hypotheses are cut). Each engine and
precision runs in a worker process of its own (bench/engine_workers.py), one at a time, round after
round. The rows report how many sentences both engines decode to the same tokens; `--memory` gives
what loading each engine, then decoding 100 sentences, added to a fresh process's resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Decode, in_streams, test_pairs  # noqa: E402
from bench.engine_workers import agreements, interleaved_rounds, serve, started, write_job  # noqa: E402
from bench.interleaved import summarize  # noqa: E402
from export.marian import hf_tokenizer  # noqa: E402
from service.runtime.beam import DecodeOptions, beam_search  # noqa: E402
from service.runtime.text_tokenizer import VocabTokenizer  # noqa: E402
from service.runtime.translator import DEFAULT_BATCH_TOKENS, Translator, batches_by_length  # noqa: E402


def hf_dir_of(model_dir: Path) -> Path:
    report = json.loads((model_dir / "export_report.json").read_text())
    return Path(report["hf_dir"])


def _ct2_convert(hf_dir: Path, out: Path, quantization: str | None) -> Path:
    converter = Path(sys.executable).parent / "ct2-transformers-converter"  # beside this interpreter
    command = [str(converter), "--model", str(hf_dir), "--output_dir", str(out), "--force"]
    if quantization:
        command += ["--quantization", quantization]
    subprocess.run(command, check=True, capture_output=True)
    return out


def _ct2(model_dir: Path, tok: VocabTokenizer, threads: int, options: DecodeOptions) -> Decode:
    import ctranslate2

    translator = ctranslate2.Translator(str(model_dir), device="cpu", intra_threads=threads, inter_threads=1)

    def decode(batch: list[list[int]]) -> list[list[int]]:
        results = translator.translate_batch(
            [[tok.pieces[i] for i in s] for s in batch],
            beam_size=options.beam_size,
            length_penalty=options.length_penalty,
            max_decoding_length=options.max_length,
        )
        return [[tok.ids[t] for t in r.hypotheses[0]] for r in results]

    return decode


def _runtime(translator: Translator, options: DecodeOptions) -> Decode:
    start = translator.languages.tag_ids[translator.languages.directions[0][1]]

    def decode(batch: list[list[int]]) -> list[list[int]]:
        return [h[0].tokens for h in beam_search(translator.model, batch, [start] * len(batch), options)]

    return decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an imported model directory")
    parser.add_argument("--hf-dir", type=Path, help="the Hugging Face directory (default: from the export report)")
    parser.add_argument("--beam-size", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--precision", choices=["fp32", "int8", "all"], default="all")
    parser.add_argument("--engines", nargs="+", default=["runtime", "ctranslate2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--max-length", type=int, default=24, help="target tokens per sentence, EOS included")
    parser.add_argument("--limit", type=int, default=0, help="first N test2016 sentences (default: all 1000)")
    parser.add_argument("--repeat", "--rounds", type=int, default=5, help="interleaved rounds of all engines")
    parser.add_argument("--data-dir")
    parser.add_argument("--low-memory", action="store_true", help="mtserve's MTSERVE_LOW_MEMORY sessions")
    parser.add_argument("--memory", action="store_true", help="resident memory of each engine, each in its own process")
    parser.add_argument("--measure", nargs=3, metavar=("ENGINE", "DIR", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "DIR", "BEAM"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.measure:
        measure(args)
    else:
        run(args)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(args: argparse.Namespace) -> None:
    """In a fresh process: load one engine, translate 100 sentences at beam 5, print its memory."""
    engine, model_dir, precision = args.measure[0], Path(args.measure[1]), args.measure[2]
    hf_dir = args.hf_dir
    tok = hf_tokenizer(hf_dir)
    sources = [[*tok.encode(s), tok.ids["</s>"]] for s in test_pairs(args.data_dir)[0][:100]]
    baseline = _status_mb("VmRSS")
    options = _options(5, args.max_length)
    if engine == "ctranslate2":
        decode = _ct2(model_dir, tok, args.threads, options)
    else:
        decode = _runtime(Translator.load(model_dir, args.threads, args.batch_tokens, args.low_memory), options)
    loaded = _status_mb("VmRSS")
    for i in range(0, len(sources), 20):
        decode(sources[i : i + 20])
    print(json.dumps({
        "engine": engine, "precision": precision, "loaded_mb": round(loaded - baseline, 1),
        "after_100_sentences_mb": round(_status_mb("VmRSS") - baseline, 1),
        "peak_mb": round(_status_mb("VmHWM") - baseline, 1), "process_baseline_mb": round(baseline, 1),
    }), flush=True)  # fmt: skip


def run(args: argparse.Namespace) -> None:
    from export.marian import import_marian

    hf_dir = args.hf_dir or hf_dir_of(args.model)
    precisions = ["fp32", "int8"] if args.precision == "all" else [args.precision]
    sources_text, _ = test_pairs(args.data_dir)
    if args.limit:
        sources_text = sources_text[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="mtserve-marian-bench-"))
    tok = hf_tokenizer(hf_dir)
    eos = tok.ids["</s>"]
    sources = [[*tok.encode(s), eos] for s in sources_text]
    dirs: dict[tuple[str, str], Path] = {}
    for p in precisions:
        if "runtime" in args.engines:
            import_marian(hf_dir, work / p, p)
            dirs[("mtserve-onnx", p)] = work / p
        if "ctranslate2" in args.engines:
            dirs[("ctranslate2", p)] = _ct2_convert(hf_dir, work / f"ct2-{p}", None if p == "fp32" else "int8")
    if args.memory:
        for (engine, p), directory in dirs.items():
            name = "runtime" if engine == "mtserve-onnx" else engine
            command = [sys.executable, __file__, "--model", str(args.model), "--hf-dir", str(hf_dir),
                       "--measure", name, str(directory), p, "--threads", str(args.threads),
                       *(["--low-memory"] if args.low_memory else [])]  # fmt: skip
            subprocess.run(command, check=True)
        return
    write_job(work, sources, batches_by_length([len(s) for s in sources], args.batch_tokens))
    for beam in args.beam_size:
        commands = {
            key: _worker_command(args, hf_dir, work, key[0], directory, beam) for key, directory in dirs.items()
        }
        results = []
        with started(commands) as workers:
            for round_index, ran in interleaved_rounds(workers, args.repeat):
                for key, (seconds, out) in ran.items():
                    target_tokens = sum(len(t) + 1 for t in out)
                    row = {
                        "engine": key[0], "precision": key[1], "beam": beam, "round": round_index,
                        "sentences": len(sources), "seconds": round(seconds, 2),
                        "tok_per_s": round(target_tokens / seconds, 1), "sent_per_s": round(len(sources) / seconds, 2),
                    }  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
                for p, same in agreements(ran, precisions):
                    print(json.dumps({"compare": p, "beam": beam, "round": round_index, "same_tokens": same,
                                      "sentences": len(sources)}), flush=True)  # fmt: skip
        for summary in summarize(results):
            print(json.dumps(summary), flush=True)


def _options(beam: int, max_length: int) -> DecodeOptions:
    """Both engines' rules: a fixed limit, no repetition guard, hypotheses cut at the limit."""
    return DecodeOptions(beam_size=beam, max_length=max_length, proportional_limit=False, repetition_guard=False,
                         cut_degenerate=False)  # fmt: skip


def _worker_command(
    args: argparse.Namespace, hf_dir: Path, work: Path, engine: str, directory: Path, beam: int
) -> list[str]:
    """This script as the worker of one engine on one model directory at one beam (bench/engine_workers.py)."""
    return [sys.executable, __file__, "--model", str(args.model), "--hf-dir", str(hf_dir), "--work", str(work),
            "--worker", engine, str(directory), str(beam), "--threads", str(args.threads),
            "--batch-tokens", str(args.batch_tokens), "--max-length", str(args.max_length),
            *(["--low-memory"] if args.low_memory else [])]  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """A worker: one engine, its batches one after another (bench/engine_workers.py)."""
    engine, directory, beam = args.worker[0], Path(args.worker[1]), int(args.worker[2])
    options = _options(beam, args.max_length)
    if engine == "ctranslate2":
        decode = _ct2(directory, hf_tokenizer(args.hf_dir), args.threads, options)
    else:
        decode = _runtime(Translator.load(directory, args.threads, args.batch_tokens, args.low_memory), options)
    serve(args.work, in_streams(decode, 1))


if __name__ == "__main__":
    main()
