"""A model's memory under each way of holding its onnxruntime sessions, each in its own process.

    python bench/session_memory.py --model DIR [--sentences 128]

Modes: `pair` (today's default: one session with the configured threads and one with one thread
per graph, each with its own pre-packed weights), `low-memory` (MTSERVE_LOW_MEMORY: the wide
session reads the mapped weights), `single` (one session per graph, one thread), `no-prepack`
(both sessions read the mapped weights). Each row gives the proportional set size (PSS) that
loading added, and what it was after one batch of `--sentences` test2016 sentences at beam 5.

Two more rows hold the sessions alone, two per graph as the runtime holds them, without running
them: over the graphs as exported (`sessions`), and over copies that onnxruntime optimised and
saved with their pre-packed weights as external data (`sessions-prepacked-file`, the
`session.save_external_prepacked_constant_initializers` option, onnxruntime 1.21 and later), so
that every session maps one packed copy instead of packing its own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.api.launcher import pss_mb  # noqa: E402

MODES = ("packed", "pair", "low-memory", "single", "no-prepack", "sessions", "sessions-prepacked-file")
GRAPH_FILES = ("encoder.onnx", "decoder_step.onnx", "weights.bin")


def prepacked_copies(model_dir: Path, out: Path) -> Path:
    """The graphs optimised and saved with their pre-packed weights in external data files."""
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    for graph in GRAPH_FILES[:2]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out / graph)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", graph + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(str(model_dir / graph), options, providers=["CPUExecutionProvider"])
    return out


def sessions_alone(model_dir: Path) -> float:
    """PSS added by two sessions per graph (two threads and one), created and not run."""
    import onnxruntime as ort

    before = pss_mb()
    held = []
    for graph in GRAPH_FILES[:2]:
        for threads in (2, 1):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            held.append(ort.InferenceSession(str(model_dir / graph), options, providers=["CPUExecutionProvider"]))
    return pss_mb() - before


def measure(mode: str, model_dir: Path, sentences: int, data_dir: Path) -> dict[str, object]:
    import service.runtime.sessions as sessions

    if mode.startswith("sessions"):
        if mode == "sessions-prepacked-file":
            import tempfile

            copies = prepacked_copies(model_dir, Path(tempfile.mkdtemp(prefix="mtserve-prepacked-")))
            on_disk = sum(p.stat().st_size for p in copies.iterdir())
            return {"mode": mode, "files_mb": round(on_disk / 1e6), "loaded_pss_mb": round(sessions_alone(copies))}
        files = sum((model_dir / name).stat().st_size for name in GRAPH_FILES if (model_dir / name).exists())
        return {"mode": mode, "files_mb": round(files / 1e6), "loaded_pss_mb": round(sessions_alone(model_dir))}

    if mode == "no-prepack":
        plain = sessions._session

        def unpacked(path: Path, threads: int, pack: bool = True, graph: bytes | None = None) -> Any:
            return plain(path, threads, False, graph)

        sessions._session = unpacked
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator

    packed: Path | bool = False
    if mode == "packed":
        import tempfile

        packed = Path(tempfile.mkdtemp(prefix="mtserve-packed-"))
        Translator.load(model_dir, 2, packed=packed)  # makes the packed copies, then is dropped
    before = pss_mb()
    started = time.perf_counter()
    translator = Translator.load(model_dir, 1 if mode == "single" else 2, low_memory=mode == "low-memory",
                                 packed=packed)  # fmt: skip
    load_s = time.perf_counter() - started
    loaded = pss_mb()
    with gzip.open(data_dir / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as handle:
        texts = [line.strip() for line in handle][:sentences]
    options = DecodeOptions(beam_size=5, max_length=40, proportional_limit=False, repetition_guard=False,
                            cut_degenerate=False)  # fmt: skip
    translator.translate(texts, translator.languages.directions[0][1], options)
    time.sleep(2 * sessions.IDLE_RELEASE_S)  # what the batch took goes back once the model idles
    files = sum((model_dir / name).stat().st_size for name in GRAPH_FILES if (model_dir / name).exists())
    return {"mode": mode, "files_mb": round(files / 1e6), "load_s": round(load_s, 2),
            "loaded_pss_mb": round(loaded - before),
            f"after_{sentences}_sentences_pss_mb": round(pss_mb() - before)}  # fmt: skip


def main() -> None:
    from model.corpus import resolve_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=128)
    parser.add_argument("--data-dir")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in this process
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    if args.mode:
        print(json.dumps(measure(args.mode, args.model, args.sentences, data_dir)), flush=True)
        return
    for mode in MODES:
        command = [sys.executable, __file__, "--model", str(args.model), "--sentences", str(args.sentences),
                   "--mode", mode, *(["--data-dir", args.data_dir] if args.data_dir else [])]  # fmt: skip
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
