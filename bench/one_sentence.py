"""One sentence alone: this runtime against CTranslate2 on the same weights, and over HTTP.

    python bench/one_sentence.py [--model artifacts/default] [--rounds 3] [--work runs/one-sentence]
                                 [--activation-scales row|calibrated] [--shortlist 1024] [--numpy-step]

The checkpoint's graphs are exported afresh at fp32 and int8, and converted to CTranslate2 at
float32 and int8 (bench/ct2_convert.py). Each engine, precision and thread count runs in a
worker process of its own; all are loaded at once and warmed up on three sentences. Then the
first 40 test2016 sentences are translated alone at beam 5 from their SentencePiece ids
(tokenization is outside both): each worker in turn translates a block of `--block` of them
(5), then the next worker the same block, before the next block (the order rotated from block to
block), `--rounds` times over. Alternating every few sentences, a fraction of a second apart,
every configuration sees the same load of a shared machine (one configuration after the other,
seconds apart, each saw a different one), and within a block each runs with its own data in the
caches as a server answering one request after another would (alternating every sentence, each
would start cold every time). While one worker runs the others wait on their input, and a pause
after each block lets a thread pool's spinning end.

The `mtserve-http` configurations are the service (`mtserve serve` on the int8 graphs, in a
process of its own) and one client that sends each sentence's text to `/v1/translate` and waits
for the answer: the request's whole path, tokenization included, where the in-process ones start
from ids. `mtserve-http-processes2` is the same with `MTSERVE_PROCESSES=2` at one thread each,
each process held to a core of its own (MTSERVE_CPU_AFFINITY's default).

With `--shortlist N`, CTranslate2 runs at int8 a second way, `ctranslate2-vmap`: with its own
shortlist, a vocabulary map made from the same lexical table (bench/ct2_convert.py), `use_vmap`,
its always-candidates padded with frequent tokens so that the median sentence gets N candidates,
as this runtime's does.

With `--numpy-step`, `mtserve-numpy-step` runs the same int8 graphs and search as `mtserve` with
the search's common step in numpy instead of C (service/runtime/native.py), and the summary sets
the two against each other at each thread count.

Per configuration it prints the median milliseconds and each round's median. The summary gives
this runtime's best in-process configuration against CTranslate2's best, as the ratio of their
medians and as the median of the per-sentence ratios (the same sentence, the same round, seconds
apart); the same for this runtime's graph runs alone in those searches (`mtserve-graphs`: the
encoder's and the decoder steps' onnxruntime calls, timed where they are called:
bench/graph_clock.py), which is what its search would take with no host work at all; and what
HTTP adds to the same graphs and threads in process, as the difference of the medians and as the
median of the per-sentence differences.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCES = 40
BEAM = 5
CONFIGS = [(engine, precision, threads) for engine in ("mtserve", "ctranslate2")
           for precision in ("int8", "fp32") for threads in (1, 2)]  # fmt: skip
CONFIGS += [("mtserve-http", "int8", threads) for threads in (1, 2)]
# The service as two processes, one thread each, each held to a core of its own (MTSERVE_CPU_AFFINITY).
HTTP_PROCESSES2 = "mtserve-http-processes2"
CONFIGS += [(HTTP_PROCESSES2, "int8", 1)]
VMAP_CONFIGS = [("ctranslate2-vmap", "int8", threads) for threads in (1, 2)]
# The same graphs and search with the common step in numpy, not in C (service/runtime/native.py).
NUMPY_STEP = "mtserve-numpy-step"
NUMPY_STEP_CONFIGS = [(NUMPY_STEP, "int8", threads) for threads in (1, 2)]
REFERENCES = ("ctranslate2", "ctranslate2-vmap")
# The graph runs alone within an in-process mtserve configuration's searches: what they would take
# with no host work at all.
GRAPHS = "mtserve-graphs"


def prepare(
    model: Path, work: Path, data_dir: str | None, calibrated: bool, shortlist: int = 0
) -> dict[tuple[str, str], Path]:
    """Model directories by (engine, precision); an earlier run's in `work` are reused where made from
    the same checkpoint and code (bench/common.py's `made_from`), and made again where not. With
    `calibrated`, this runtime's int8 graphs have calibrated activation scales; with `shortlist`,
    this runtime's graphs have an output shortlist of that size (`mtserve shortlist`), and
    CTranslate2's int8 model a vocabulary map from the same table (("ctranslate2-vmap", "int8"))."""
    from bench.common import bench_data, made_from, mark_made, reusable, test_pairs
    from bench.ct2_convert import convert, vmap_from_shortlist
    from export.calibrate import CALIBRATION_PAIRS
    from export.exporter import export_model
    from export.shortlist import config_pairs, shortlist_from_text
    from model import corpus

    dirs: dict[tuple[str, str], Path] = {}
    data = bench_data()
    for precision in ("int8", "fp32"):
        calibrate = calibrated and precision == "int8"
        ours, theirs = work / (f"{precision}-calibrated" if calibrate else precision), work / f"ct2-{precision}"
        digest = made_from(model, precision, calibrate)
        if not reusable(ours, digest, "manifest.json"):
            resolved = corpus.resolve_data_dir(data_dir)
            held = corpus.held_sentences(data, resolved)
            text = [s for _, s in corpus.monolingual_sentences(data, resolved, held)]
            # As `mtserve export --quantize int8`: weights rounded against the calibration's activations.
            calibration = corpus.first_pairs_by_language(data, resolved, held, CALIBRATION_PAIRS)
            export_model(model, ours, text, precision, test_pairs(data_dir)[0][:200], calibration_text=calibration,
                         constant_scales=calibrate)  # fmt: skip
            mark_made(ours, digest)
        if shortlist:
            listed, digest = ours.with_name(f"{ours.name}-shortlist{shortlist}"), made_from(model, digest, shortlist)
            if not reusable(listed, digest, "manifest.json"):
                shutil.copytree(ours, listed)
                shortlist_from_text(listed, config_pairs(data, corpus.resolve_data_dir(data_dir)), shortlist)
                mark_made(listed, digest)
            ours = listed
        converted = made_from(model, "ctranslate2", precision)
        if not reusable(theirs, converted, "model.bin"):
            convert(model, theirs, None if precision == "fp32" else "int8")
            mark_made(theirs, converted)
        dirs[("mtserve", precision)], dirs[("ctranslate2", precision)] = ours, theirs
        if shortlist and precision == "int8":
            mapped, converted = work / f"ct2-int8-vmap{shortlist}", made_from(model, "ctranslate2-vmap", digest)
            if not reusable(mapped, converted, "model.bin"):
                vmap = vmap_from_shortlist(ours, data.directions[0][1], work / f"vmap{shortlist}.txt", shortlist,
                                           bench_sources(model, data_dir))  # fmt: skip
                convert(model, mapped, "int8", vmap=vmap)
                mark_made(mapped, converted)
            dirs[("ctranslate2-vmap", precision)] = mapped
    return dirs


def bench_sources(model: Path, data_dir: str | None) -> list[list[int]]:
    """The sentences' SentencePiece ids, EOS ended, as every engine gets them."""
    import sentencepiece as spm

    from bench.common import test_pairs
    from service import conventions as cv

    sp = spm.SentencePieceProcessor(model_file=str(model / "spm.model"))
    return [[*ids, cv.EOS_ID] for ids in sp.encode(test_pairs(data_dir)[0][:SENTENCES])]


def worker(engine: str, directory: Path, threads: int, model: Path, data_dir: str | None) -> None:
    """Loads one engine, then for each sentence index read from stdin translates that sentence alone
    and writes the milliseconds it took. A line "INDEX LENGTH" forces LENGTH decoder steps: no
    hypothesis ends before, each is cut there (bench/step_slope.py; in process only)."""
    import sentencepiece as spm

    from bench.common import bench_data, post_translation, service_connection, test_pairs
    from service import conventions as cv

    sp = spm.SentencePieceProcessor(model_file=str(model / "spm.model"))
    source, target = bench_data().directions[0]
    texts = test_pairs(data_dir)[0][:SENTENCES]
    sources = bench_sources(model, data_dir)
    with contextlib.ExitStack() as stack:
        if engine in ("mtserve", NUMPY_STEP):
            from bench.graph_clock import timed_runs
            from service.runtime import native
            from service.runtime.beam import DecodeOptions, beam_search
            from service.runtime.translator import Translator

            if engine == NUMPY_STEP:
                native.common_step = None
            translator = Translator.load(directory, threads)
            tag, options = translator.languages.tag_ids[target], DecodeOptions(beam_size=BEAM)
            encoder, decoder = stack.enter_context(timed_runs())

            def decode(index: int, length: int = 0) -> float | None:
                chosen = options
                if length:  # forced: no hypothesis ends before `length`, each is cut there
                    chosen = DecodeOptions(beam_size=BEAM, min_length=length, max_length=length,
                                           proportional_limit=False)  # fmt: skip
                encoder.reset()
                decoder.reset()
                beam_search(translator.model, [sources[index]], [tag], chosen)
                return (encoder.seconds + decoder.seconds) * 1000

        elif engine in ("mtserve-http", HTTP_PROCESSES2):
            from service.api.launcher import live_server

            env = {"MTSERVE_MODEL_DIR": str(directory.resolve()), "MTSERVE_THREADS": str(threads),
                   "MTSERVE_PROCESSES": "2" if engine == HTTP_PROCESSES2 else "1",
                   "MTSERVE_LOG_LEVEL": "warning"}  # fmt: skip
            connection = service_connection(stack.enter_context(live_server(env=env)).url)
            stack.callback(connection.close)

            def decode(index: int, length: int = 0) -> float | None:
                if length:
                    raise ValueError("a forced length is for the in-process engines")
                post_translation(connection, texts[index], source, target, BEAM)
                return None

        else:
            import ctranslate2

            ct2 = ctranslate2.Translator(str(directory), device="cpu", intra_threads=threads, inter_threads=1)
            prefix, use_vmap = f"<2{target}>", engine == "ctranslate2-vmap"

            def decode(index: int, length: int = 0) -> float | None:
                ids = sources[index]
                # CTranslate2's lengths count the target prefix (the language tag).
                limit = length or cv.max_target_length(len(ids))
                ct2.translate_batch([[sp.id_to_piece(i) for i in ids]], target_prefix=[[prefix]], beam_size=BEAM,
                                    length_penalty=1.0, max_decoding_length=limit + 1,
                                    min_decoding_length=length + 1 if length else 0, use_vmap=use_vmap)  # fmt: skip
                return None

        for index in range(3):
            decode(index)
        print("ready", flush=True)
        for line in sys.stdin:
            index, *length = map(int, line.split())
            started = time.perf_counter()
            graph_ms = decode(index, *length)
            elapsed_ms = (time.perf_counter() - started) * 1000
            print(json.dumps({"ms": elapsed_ms, "graph_ms": graph_ms}), flush=True)


# After a block, before the next worker starts: a pool's threads spin for a while after a call.
PAUSE_S = 0.02


class _Worker:
    def __init__(self, config: tuple[str, str, int], directory: Path, args: argparse.Namespace) -> None:
        engine, _, threads = config
        command = [sys.executable, __file__, "--model", str(args.model), "--worker", engine, str(directory),
                   str(threads), *(["--data-dir", args.data_dir] if args.data_dir else [])]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout

    def wait_ready(self) -> None:
        line = self.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a worker failed to start (exit {self.process.wait()})")

    def translate(self, index: int, length: int = 0) -> tuple[float, float | None]:
        """Milliseconds the sentence took, and those of its graph runs alone (in-process mtserve only)."""
        self.stdin.write(f"{index} {length}\n" if length else f"{index}\n")
        self.stdin.flush()
        record = json.loads(self.stdout.readline())
        return float(record["ms"]), record["graph_ms"]

    def close(self) -> None:
        self.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default", help="a checkpoint directory")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the sentences")
    parser.add_argument("--block", type=int, default=5, help="sentences a worker translates in a row")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--activation-scales", choices=["row", "calibrated"], default="row", help="this runtime's int8 graphs"
    )
    parser.add_argument("--shortlist", type=int, default=0, help="this runtime's graphs with an output shortlist of N")
    parser.add_argument("--numpy-step", action="store_true", help="also the search with its common step in numpy")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "DIR", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, directory, threads = args.worker
        worker(engine, Path(directory), int(threads), args.model, args.data_dir)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="mtserve-one-sentence-"))
    dirs = prepare(args.model, work, args.data_dir, args.activation_scales == "calibrated", args.shortlist)
    configs = CONFIGS + (VMAP_CONFIGS if args.shortlist else []) + (NUMPY_STEP_CONFIGS if args.numpy_step else [])
    graphs_of = {"mtserve-http": "mtserve", HTTP_PROCESSES2: "mtserve", NUMPY_STEP: "mtserve"}
    workers = {
        config: _Worker(config, dirs[(graphs_of.get(config[0], config[0]), config[1])], args) for config in configs
    }
    for w in workers.values():
        w.wait_ready()
    times: dict[tuple[str, str, int], list[list[float]]] = {config: [] for config in configs}
    times |= {(GRAPHS, *c[1:]): [] for c in configs if c[0] == "mtserve"}
    try:
        for round_index in range(args.rounds):
            for per_round in times.values():
                per_round.append([])
            for block, start in enumerate(range(0, SENTENCES, args.block)):
                shift = (round_index + block) % len(configs)
                for config in configs[shift:] + configs[:shift]:
                    for index in range(start, min(start + args.block, SENTENCES)):
                        ms, graph_ms = workers[config].translate(index)
                        times[config][-1].append(ms)
                        if config[0] == "mtserve" and graph_ms is not None:
                            times[(GRAPHS, *config[1:])][-1].append(graph_ms)
                    time.sleep(PAUSE_S)
            for config in configs:
                engine, precision, threads = config
                print(json.dumps({"engine": engine, "precision": precision, "threads": threads, "round": round_index,
                                  "p50_ms": round(statistics.median(times[config][-1]), 2)}), flush=True)  # fmt: skip
    finally:
        for w in workers.values():
            w.close()
    medians = {config: statistics.median(t for r in rounds for t in r) for config, rounds in times.items()}
    for (engine, precision, threads), median in medians.items():
        rounds = [round(statistics.median(r), 2) for r in times[(engine, precision, threads)]]
        print(json.dumps({"summary": engine, "precision": precision, "threads": threads,
                          "median_ms": round(median, 2), "rounds": rounds}))  # fmt: skip
    engines = {c[0] for c in configs}
    best = {engine: min((m, c) for c, m in medians.items() if c[0] == engine) for engine in engines}
    ours = best["mtserve"][1]
    for reference in (r for r in REFERENCES if r in engines):
        theirs = best[reference][1]
        for label, config in (("mtserve_best", ours), ("mtserve_best_graph_runs_alone", (GRAPHS, *ours[1:]))):
            ratios = paired(times, config, theirs, float.__truediv__)
            print(json.dumps({label: [round(medians[config], 2), *ours[1:]],
                              f"{reference}_best": [round(medians[theirs], 2), *theirs[1:]],
                              "ratio_of_medians": round(medians[config] / medians[theirs], 3),
                              "median_paired_ratio": round(statistics.median(ratios), 3)}))  # fmt: skip
    for config in configs:
        if config[0] == NUMPY_STEP:
            in_c = ("mtserve", *config[1:])
            ratios = paired(times, in_c, config, float.__truediv__)
            print(json.dumps({"c_step_over_numpy_step": config[1:],
                              "medians_ms": [round(medians[in_c], 2), round(medians[config], 2)],
                              "difference_of_medians_ms": round(medians[in_c] - medians[config], 2),
                              "median_paired_ratio": round(statistics.median(ratios), 3)}))  # fmt: skip
        if config[0] in ("mtserve-http", HTTP_PROCESSES2):
            local = ("mtserve", *config[1:])
            differences = paired(times, config, local, float.__sub__)
            print(json.dumps({"http_over_in_process": config,
                              "difference_of_medians_ms": round(medians[config] - medians[local], 2),
                              "median_paired_difference_ms": round(statistics.median(differences), 2)}))  # fmt: skip


def paired(times: dict[tuple[str, str, int], list[list[float]]], a: tuple[str, str, int], b: tuple[str, str, int],
           compare: Callable[[float, float], float]) -> list[float]:  # fmt: skip
    """`compare` of configuration a's time and b's for the same sentence in the same round."""
    return [compare(x, y) for ra, rb in zip(times[a], times[b], strict=True) for x, y in zip(ra, rb, strict=True)]


if __name__ == "__main__":
    main()
