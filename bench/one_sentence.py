"""One sentence alone, in process: this runtime against CTranslate2 on the same weights.

    python bench/one_sentence.py [--model artifacts/default] [--rounds 3] [--work runs/one-sentence]

The checkpoint's graphs are exported afresh at fp32 and int8, and converted to CTranslate2 at
float32 and int8 (bench/ct2_convert.py). Each engine, precision and thread count runs in a
process of its own, one after the other, `--rounds` times (interleaved): it loads, translates
three sentences to warm up, then each of the first 40 test2016 sentences alone at beam 5 from
its SentencePiece ids (tokenization is outside both), and prints the median milliseconds. The
summary gives each configuration's median over the rounds, and this runtime's best against
CTranslate2's best configuration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCES = 40
BEAM = 5
CONFIGS = [(engine, precision, threads) for engine in ("mtserve", "ctranslate2")
           for precision in ("int8", "fp32") for threads in (1, 2)]  # fmt: skip


def prepare(model: Path, work: Path, data_dir: str | None) -> dict[tuple[str, str], Path]:
    """Model directories by (engine, precision); an earlier run's in `work` are reused."""
    from bench.common import bench_data, test_pairs
    from bench.ct2_convert import convert
    from export.exporter import export_model
    from model import corpus

    dirs: dict[tuple[str, str], Path] = {}
    data = bench_data()
    for precision in ("int8", "fp32"):
        ours, theirs = work / precision, work / f"ct2-{precision}"
        if not (ours / "manifest.json").is_file():
            resolved = corpus.resolve_data_dir(data_dir)
            held = corpus.held_sentences(data, resolved)
            text = [s for _, s in corpus.monolingual_sentences(data, resolved, held)]
            export_model(model, ours, text, precision, test_pairs(data_dir)[0][:200])
        if not (theirs / "model.bin").is_file():
            convert(model, theirs, None if precision == "fp32" else "int8")
        dirs[("mtserve", precision)], dirs[("ctranslate2", precision)] = ours, theirs
    return dirs


def measure(engine: str, directory: Path, threads: int, model: Path, data_dir: str | None) -> float:
    """Median milliseconds of one sentence alone, in this process."""
    import sentencepiece as spm

    from bench.common import bench_target, test_pairs
    from service import conventions as cv

    sp = spm.SentencePieceProcessor(model_file=str(model / "spm.model"))
    target = bench_target()
    sources = [[*ids, cv.EOS_ID] for ids in sp.encode(test_pairs(data_dir)[0][:SENTENCES])]
    if engine == "mtserve":
        from service.runtime.beam import DecodeOptions, beam_search
        from service.runtime.translator import Translator

        translator = Translator.load(directory, threads)
        tag, options = translator.languages.tag_ids[target], DecodeOptions(beam_size=BEAM)

        def decode(ids: list[int]) -> None:
            beam_search(translator.model, [ids], [tag], options)

    else:
        import ctranslate2

        ct2 = ctranslate2.Translator(str(directory), device="cpu", intra_threads=threads, inter_threads=1)
        prefix = f"<2{target}>"

        def decode(ids: list[int]) -> None:
            limit = cv.max_target_length(len(ids))
            ct2.translate_batch([[sp.id_to_piece(i) for i in ids]], target_prefix=[[prefix]], beam_size=BEAM,
                                length_penalty=1.0, max_decoding_length=limit + 1)  # fmt: skip

    for ids in sources[:3]:
        decode(ids)
    times = []
    for ids in sources:
        started = time.perf_counter()
        decode(ids)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default", help="a checkpoint directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--measure", nargs=3, metavar=("ENGINE", "DIR", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        engine, directory, threads = args.measure
        print(json.dumps({"ms": measure(engine, Path(directory), int(threads), args.model, args.data_dir)}))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="mtserve-one-sentence-"))
    dirs = prepare(args.model, work, args.data_dir)
    results: dict[tuple[str, str, int], list[float]] = {config: [] for config in CONFIGS}
    for round_index in range(args.rounds):
        for engine, precision, threads in CONFIGS:
            command = [sys.executable, __file__, "--model", str(args.model), "--measure", engine,
                       str(dirs[(engine, precision)]), str(threads),
                       *(["--data-dir", args.data_dir] if args.data_dir else [])]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            ms = json.loads(output.strip().splitlines()[-1])["ms"]
            results[(engine, precision, threads)].append(ms)
            print(json.dumps({"engine": engine, "precision": precision, "threads": threads,
                              "round": round_index, "p50_ms": round(ms, 2)}), flush=True)  # fmt: skip
    medians = {config: statistics.median(times) for config, times in results.items()}
    for (engine, precision, threads), median in medians.items():
        rounds = [round(ms, 2) for ms in results[(engine, precision, threads)]]
        print(json.dumps({"summary": engine, "precision": precision, "threads": threads,
                          "median_p50_ms": round(median, 2), "rounds": rounds}))  # fmt: skip
    best = {engine: min((m, c) for c, m in medians.items() if c[0] == engine) for engine in ("mtserve", "ctranslate2")}
    print(json.dumps({"mtserve_best": [round(best["mtserve"][0], 2), *best["mtserve"][1][1:]],
                      "ctranslate2_best": [round(best["ctranslate2"][0], 2), *best["ctranslate2"][1][1:]],
                      "ratio": round(best["mtserve"][0] / best["ctranslate2"][0], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
