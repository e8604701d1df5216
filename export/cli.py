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
    from export.exporter import ExportValidationError, export_model
    from model import corpus

    data_dir = corpus.resolve_data_dir(args.data_dir)
    parallel = corpus.training_pairs(data_dir)
    mono = corpus.monolingual_sentences(data_dir, parallel)
    sentences = [p.en for p in corpus.multi30k(data_dir, "test2016")[:VALIDATION_SENTENCES]]
    try:
        report = export_model(args.checkpoint, args.out, mono["en"] + mono["fr"], args.quantize or "fp32", sentences)
    except ExportValidationError as exc:
        sys.exit(f"mtserve export: validation failed: {exc}")
    print(json.dumps(report, indent=2))
    return 0


def register(sub: Any) -> None:
    export = sub.add_parser("export", help="export a checkpoint directory to ONNX (needs the train extra)")
    export.add_argument("--checkpoint", type=Path, required=True, help="model directory written by `mtserve train`")
    export.add_argument("--out", type=Path, required=True, help="directory for the graphs and manifest")
    export.add_argument(
        "--quantize", choices=["int8"], help="int8 MatMul weights, activations scaled per row (export/quantize.py)"
    )
    export.add_argument(
        "--data-dir", help="data directory: training text for the fill vocabulary, test2016 for validation"
    )
    export.set_defaults(handler=_export)
