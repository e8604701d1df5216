"""`mtserve export`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.cli import require_torch

VALIDATION_SENTENCES = 200


def _export(args: argparse.Namespace) -> int:
    require_torch()
    from export.exporter import ExportConfigError, ExportValidationError, export_model
    from model import corpus
    from model.config import ModelConfig
    from model.evaluate import training_data_config

    try:
        data = training_data_config(args, args.checkpoint)
        data_dir = corpus.resolve_data_dir(args.data_dir)
        directions = ModelConfig.load(args.checkpoint / "config.json").directions
        held = corpus.held_sentences(data, data_dir)
        text = (sentence for _, sentence in corpus.monolingual_sentences(data, data_dir, held))
        sentences: list[str] = []
        split = next((name for name in data.split_names if directions and data.split_langs(name) in
                      (directions[0], directions[0][::-1])), None)  # fmt: skip
        if split is not None:
            sentences = corpus.split_texts(data, data_dir, split, directions[0])[0][:VALIDATION_SENTENCES]
        report = export_model(
            args.checkpoint, args.out, text, args.quantize or "fp32", sentences, args.repetition_guard != "off"
        )
    except ExportValidationError as exc:
        sys.exit(f"mtserve export: validation failed: {exc}")
    except (ExportConfigError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"mtserve export: {exc}")
    print(json.dumps(report, indent=2))
    return 0


def _import_marian(args: argparse.Namespace) -> int:
    require_torch()
    from export.exporter import ExportValidationError
    from export.marian import MarianImportError, import_marian

    targets = [t for part in args.target or [] for t in part.split(",") if t]
    try:
        report = import_marian(
            args.hf_dir, args.out, args.quantize or "fp32", args.source, targets,
            repetition_guard=args.repetition_guard == "on",
        )  # fmt: skip
    except ExportValidationError as exc:
        sys.exit(f"mtserve import: validation failed: {exc}")
    except MarianImportError as exc:
        sys.exit(f"mtserve import: {args.hf_dir}: {exc}")
    print(json.dumps(report, indent=2))
    return 0


def _repetition_guard_flag(parser: argparse.ArgumentParser, default: str, why: str) -> None:
    parser.add_argument(
        "--repetition-guard",
        choices=["on", "off"],
        default=default,
        help=f"stop repeated n-grams and cut degenerate output when served (default {default}: {why}; "
        "MTSERVE_REPETITION_GUARD and requests may override it)",
    )


def register(sub: Any) -> None:
    imp = sub.add_parser("import", help="import an existing model (needs the train extra)")
    kinds = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    marian = kinds.add_parser("marian", help="a local Hugging Face Marian (OPUS-MT) directory")
    marian.add_argument(
        "hf_dir", type=Path, metavar="HF_DIR", help="config.json, weights, source/target.spm, vocab.json"
    )
    marian.add_argument("--out", type=Path, required=True, help="model directory to write")
    marian.add_argument("--quantize", choices=["int8"], help="int8 MatMul weights (as `mtserve export`)")
    marian.add_argument("--source", help="source language code (default: tokenizer_config.json or the directory name)")
    marian.add_argument(
        "--target", action="append", help="target language code(s); several for a multi-target model (>>fra<<)"
    )
    _repetition_guard_flag(marian, "off", "transformers' own output")
    marian.set_defaults(handler=_import_marian)

    export = sub.add_parser("export", help="export a checkpoint directory to ONNX (needs the train extra)")
    export.add_argument("--checkpoint", type=Path, required=True, help="model directory written by `mtserve train`")
    export.add_argument("--out", type=Path, required=True, help="directory for the graphs and manifest")
    export.add_argument(
        "--quantize", choices=["int8"], help="int8 MatMul weights, activations scaled per row (export/quantize.py)"
    )
    export.add_argument(
        "--config",
        type=Path,
        help="training config: its text gives the fill vocabulary, its first split in the model's first "
        "direction the validation sentences (default: the checkpoint's train_config.json)",
    )
    export.add_argument("--data-dir", help="data directory (default: $MTSERVE_DATA_DIR or ../shared/data)")
    _repetition_guard_flag(export, "on", "mtserve's rules")
    export.set_defaults(handler=_export)
