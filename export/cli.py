"""`mtserve export`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.cli_shortlist import ImportShortlist, shortlist_flags
from export.cli_text import parallel_text, sentences_by_language
from model.cli import require_torch

VALIDATION_SENTENCES = 200


def _export(args: argparse.Namespace) -> int:
    require_torch()
    from export.calibrate import CALIBRATION_PAIRS
    from export.exporter import ExportConfigError, export_model
    from export.writer import ExportValidationError
    from model import corpus
    from model.config import ModelConfig
    from model.train_config import training_data_config

    try:
        data = training_data_config(args, args.checkpoint)
        data_dir = corpus.resolve_data_dir(args.data_dir)
        directions = ModelConfig.load(args.checkpoint / "config.json").directions
        held = corpus.held_sentences(data, data_dir)
        text = (sentence for _, sentence in corpus.monolingual_sentences(data, data_dir, held))
        calibration = None
        constant_scales = args.activation_scales == "calibrated"
        compensated = args.weight_rounding == "compensated"
        if constant_scales and args.quantize != "int8":
            raise ValueError("--activation-scales calibrated scales int8 activations: add --quantize int8")
        if args.quantize == "int8" and (constant_scales or compensated):
            calibration = corpus.first_pairs_by_language(data, data_dir, held, CALIBRATION_PAIRS)
            if not calibration and constant_scales:
                raise ValueError("--activation-scales calibrated: the training config has no pairs to calibrate on")
            if not calibration:
                raise ValueError(
                    "--weight-rounding compensated (the default at int8): the training config has no pairs to "
                    "calibrate on; add --weight-rounding nearest"
                )
        sentences: list[str] = []
        split = next((name for name in data.split_names if directions and data.split_langs(name) in
                      (directions[0], directions[0][::-1])), None)  # fmt: skip
        if split is not None:
            sentences = corpus.split_texts(data, data_dir, split, directions[0])[0][:VALIDATION_SENTENCES]
        report = export_model(
            args.checkpoint, args.out, text, args.quantize or "fp32", sentences, args.repetition_guard != "off",
            calibration, constant_scales, compensated,
        )  # fmt: skip
    except ExportValidationError as exc:
        sys.exit(f"mtserve export: validation failed: {exc}")
    except (ExportConfigError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"mtserve export: {exc}")
    print(json.dumps(report, indent=2))
    return 0


def _shortlist(args: argparse.Namespace) -> int:
    from export.shortlist import ShortlistError, config_pairs, shortlist_from_text
    from model import corpus
    from service.manifest import ModelFileError

    pairs: dict[str, list[tuple[str, str]]] = {}
    for (_, target), found in parallel_text(args.pairs or [], "--pairs", "shortlist").items():
        pairs.setdefault(target, []).extend(found)
    monolingual = sentences_by_language(args.sources or [], "--sources", "shortlist", "en=sentences.en")
    try:
        if monolingual:
            from export.shortlist import translated_pairs

            for target, found in translated_pairs(args.model, monolingual).items():
                pairs.setdefault(target, []).extend(found)
        if not args.pairs and not args.sources:
            from model.train_config import training_data_config

            pairs = config_pairs(training_data_config(args, args.model), corpus.resolve_data_dir(args.data_dir))
        report = shortlist_from_text(args.model, pairs, args.size)
    except (ShortlistError, ModelFileError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"mtserve shortlist: {exc}")
    print(json.dumps(report, indent=2))
    return 0


def _reported(source: Path, work: Callable[[], dict[str, Any]], errors: tuple[type[Exception], ...]) -> int:
    """Run an import; its report on stdout, or one line naming what failed."""
    from export.shortlist import ShortlistError
    from export.writer import ExportValidationError

    caught: tuple[type[Exception], ...] = (*errors, ShortlistError)
    try:
        report = work()
    except ExportValidationError as exc:
        sys.exit(f"mtserve import: validation failed: {exc}")
    except caught as exc:
        sys.exit(f"mtserve import: {source}: {exc}")
    print(json.dumps(report, indent=2))
    return 0


def _import_marian(args: argparse.Namespace) -> int:
    require_torch()
    from export.calibrate import CalibrationError
    from export.marian import MarianImportError, import_marian

    targets = [t for part in args.target or [] for t in part.split(",") if t]
    guard = args.repetition_guard == "on"
    calibration = _calibration_text(args, "import")
    shortlist = ImportShortlist(args, "import")

    def work() -> dict[str, Any]:
        report = import_marian(args.hf_dir, args.out, args.quantize or "fp32", args.source, targets,
                               repetition_guard=guard, calibration_text=calibration)  # fmt: skip
        return shortlist.added_alone(args.out, report)

    return _reported(args.hf_dir, work, (MarianImportError, CalibrationError))


def _import_ctranslate2(args: argparse.Namespace) -> int:
    from export.calibrate import CalibrationError
    from export.ctranslate2 import ARGOS_GENERATION, CT2ImportError, import_ctranslate2

    guard = args.repetition_guard == "on"
    generation = ARGOS_GENERATION.model_copy(update={"repetition_guard": guard, "cut_degenerate": guard})
    calibration = _calibration_text(args, "import")
    shortlist = ImportShortlist(args, "import")

    def work() -> dict[str, Any]:
        report = import_ctranslate2(args.ct2_dir, args.out, args.source, args.target, args.spm, args.target_spm,
                                    args.target_prefix, args.quantize or "fp32", generation,
                                    calibration_text=calibration)  # fmt: skip
        return shortlist.added_alone(args.out, report)

    return _reported(args.ct2_dir, work, (CT2ImportError, CalibrationError))


def _import_argos(args: argparse.Namespace) -> int:
    from export.argos import default_packages_dir, import_packages

    paths = args.paths or [default_packages_dir()]
    if not args.paths:
        print(f"packages from {paths[0]} (LibreTranslate's packages directory)", file=sys.stderr)
    calibration = _calibration_text(args, "import")
    shortlist = ImportShortlist(args, "import")
    outcomes = import_packages(paths, args.out, args.quantize or "fp32", calibration)
    shortlisted = shortlist.report_outcomes(outcomes)
    imported = sum(o.problem is None for o in outcomes)
    if not outcomes:
        print(f"no package found in {', '.join(map(str, paths))}", file=sys.stderr)
    # 0: all imported (and given their shortlists); 1: some skipped (their lines say why); 2: none imported
    return 0 if outcomes and imported == len(outcomes) and shortlisted else 1 if imported else 2


def _pull(args: argparse.Namespace) -> int:
    from export.argos import ArgosPackageError
    from export.ctranslate2 import CT2ImportError
    from export.pull import DEFAULT_ARGOS_INDEX, PullError, pull_argos, pull_hf
    from export.writer import ExportValidationError

    errors: tuple[type[Exception], ...] = (PullError, CT2ImportError, ArgosPackageError, ExportValidationError)
    calibration = _calibration_text(args, "pull")
    shortlist = ImportShortlist(args, "pull")
    try:
        if args.kind == "hf":  # a Hugging Face model is read through transformers and torch
            require_torch()
            from export.calibrate import CalibrationError
            from export.marian import MarianImportError
            from export.shortlist import ShortlistError

            try:
                pulled = pull_hf(args.repo, args.out, args.quantize or "fp32", calibration)
                print(pulled, flush=True)
                report = shortlist.added_alone(pulled, {})
                if "shortlist" in report:  # its size and pairs, and the warning of too few
                    print(shortlist.line(report["shortlist"]), flush=True)
            except (MarianImportError, CalibrationError, ShortlistError) as exc:
                sys.exit(f"mtserve pull: {exc}")
            return 0
        index = args.index or os.environ.get("ARGOS_PACKAGE_INDEX") or DEFAULT_ARGOS_INDEX
        outcomes = pull_argos(args.languages, args.out, index, args.quantize or "fp32", calibration)
    except errors as exc:
        sys.exit(f"mtserve pull: {exc}")
    shortlisted = shortlist.report_outcomes(outcomes)
    return 0 if all(o.problem is None for o in outcomes) and shortlisted else 1


def _int8_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantize", choices=["int8"], help="int8 MatMul weights (as `mtserve export`)")
    parser.add_argument(
        "--calibrate",
        nargs="+",
        metavar="LANG=FILE",
        help="with --quantize int8: constant activation scales and weights rounded to compensate their "
        "errors, calibrated on FILE's sentences (one a line) in source language LANG, as `mtserve export "
        "--activation-scales calibrated` does on training text: a sentence about an eighth faster, a little "
        "further from fp32 (docs/BENCHMARKS.md)",
    )


def _calibration_text(args: argparse.Namespace, command: str) -> dict[str, list[str]] | None:
    """--calibrate LANG=FILE ... as source language -> sentences; None without it. Exits with one
    line naming the flag, value or file where one cannot be used."""
    if not args.calibrate:
        return None
    if args.quantize != "int8":
        sys.exit(f"mtserve {command}: --calibrate scales int8 activations: add --quantize int8")
    return sentences_by_language(args.calibrate, "--calibrate", command, "en=sample.en.txt")


def _repetition_guard_flag(parser: argparse.ArgumentParser, default: str, why: str) -> None:
    parser.add_argument(
        "--repetition-guard",
        choices=["on", "off"],
        default=default,
        help=f"stop repeated n-grams and cut degenerate output when served (default {default}: {why}; "
        "MTSERVE_REPETITION_GUARD and requests may override it)",
    )


def register(sub: Any) -> None:
    imp = sub.add_parser("import", help="import an existing model (Marian from Hugging Face needs the train extra)")
    kinds = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    marian = kinds.add_parser("marian", help="a local Hugging Face Marian (OPUS-MT) directory")
    marian.add_argument(
        "hf_dir", type=Path, metavar="HF_DIR", help="config.json, weights, source/target.spm, vocab.json"
    )
    marian.add_argument("--out", type=Path, required=True, help="model directory to write")
    _int8_flags(marian)
    shortlist_flags(marian)
    marian.add_argument("--source", help="source language code (default: tokenizer_config.json or the directory name)")
    marian.add_argument(
        "--target", action="append", help="target language code(s); several for a multi-target model (>>fra<<)"
    )
    _repetition_guard_flag(marian, "off", "transformers' own output")
    marian.set_defaults(handler=_import_marian)

    argos = kinds.add_parser(
        "argos",
        help="Argos Translate packages (LibreTranslate's): .argosmodel files, package folders, or folders of them",
    )
    argos.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH",
        help="default: LibreTranslate's packages directory ($ARGOS_PACKAGES_DIR, argos-translate's settings.json, "
        "else ~/.local/share/argos-translate/packages)",
    )  # fmt: skip
    argos.add_argument("--out", type=Path, required=True, help="directory for one model directory per package")
    _int8_flags(argos)
    shortlist_flags(argos)
    argos.set_defaults(handler=_import_argos)

    ct2 = kinds.add_parser("ctranslate2", help="a CTranslate2 Transformer directory (model.bin, vocabulary)")
    ct2.add_argument("ct2_dir", type=Path, metavar="CT2_DIR")
    ct2.add_argument("--out", type=Path, required=True, help="model directory to write")
    ct2.add_argument("--source", required=True, help="source language code")
    ct2.add_argument("--target", required=True, help="target language code")
    ct2.add_argument("--spm", type=Path, required=True, help="the source SentencePiece model (and the target's)")
    ct2.add_argument("--target-spm", type=Path, help="the target SentencePiece model, where it differs")
    ct2.add_argument(
        "--target-prefix",
        help="a target token forced first: the decoder's first input where config.json has no decoder_start_token, "
        "else forced after it and left out of the output",
    )
    _int8_flags(ct2)
    shortlist_flags(ct2)
    _repetition_guard_flag(ct2, "off", "CTranslate2's own output")
    ct2.set_defaults(handler=_import_ctranslate2)

    pull = sub.add_parser("pull", help="download models by name and import them (hf needs the train extra)")
    sources = pull.add_subparsers(dest="kind", required=True, metavar="SOURCE")
    argos_pull = sources.add_parser("argos", help="Argos packages between the named languages (LibreTranslate's)")
    argos_pull.add_argument("languages", nargs="+", metavar="LANG", help="language codes, e.g. en de fr")
    argos_pull.add_argument("--out", type=Path, required=True, help="directory for one model directory per package")
    argos_pull.add_argument(
        "--index", help="the package index URL (default: $ARGOS_PACKAGE_INDEX, else argospm's index.json)",
    )  # fmt: skip
    _int8_flags(argos_pull)
    shortlist_flags(argos_pull)
    argos_pull.set_defaults(handler=_pull)
    hf = sources.add_parser("hf", help="a Hugging Face Marian repository, e.g. Helsinki-NLP/opus-mt-de-en")
    hf.add_argument("repo", metavar="REPO")
    hf.add_argument("--out", type=Path, required=True, help="directory for the model directory")
    _int8_flags(hf)
    shortlist_flags(hf)
    hf.set_defaults(handler=_pull)

    export = sub.add_parser("export", help="export a checkpoint directory to ONNX (needs the train extra)")
    export.add_argument("--checkpoint", type=Path, required=True, help="model directory written by `mtserve train`")
    export.add_argument("--out", type=Path, required=True, help="directory for the graphs and manifest")
    export.add_argument(
        "--quantize", choices=["int8"], help="int8 MatMul weights, activations scaled per row (export/quantize.py)"
    )
    export.add_argument(
        "--activation-scales",
        choices=["row", "calibrated"],
        default="row",
        help="int8 activations: each row scaled by its own range (row, the default), or by constant ranges "
        "calibrated on the config's training sentences: a sentence about an eighth faster, about 0.2 BLEU "
        "further from fp32 (docs/BENCHMARKS.md)",
    )
    export.add_argument(
        "--weight-rounding",
        choices=["compensated", "nearest"],
        default="compensated",
        help="int8 weights: rounded so that their errors on the activations of the config's training "
        "sentences compensate (compensated, the default: about a fifth closer to fp32), or each to its "
        "nearest code (docs/BENCHMARKS.md)",
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

    shortlist = sub.add_parser(
        "shortlist",
        help="give a model directory a per-sentence output shortlist from training pairs: a faster decoder step",
    )
    shortlist.add_argument("model", type=Path, help="model directory (rewritten in place)")
    shortlist.add_argument(
        "--size", type=int, default=1024, help="candidate tokens per sentence (default 1024; docs/BENCHMARKS.md)"
    )
    shortlist.add_argument(
        "--pairs",
        nargs="+",
        metavar="SRC-TGT=SOURCE_FILE,TARGET_FILE",
        help="parallel text, one sentence a line, for each direction (default: the training pairs of --config)",
    )
    shortlist.add_argument(
        "--sources",
        nargs="+",
        metavar="LANG=FILE",
        help="sentences in LANG, one a line, that the model first translates itself: its own translations "
        "are the pairs (a model without parallel text at hand, such as an Argos package)",
    )
    shortlist.add_argument(
        "--config",
        type=Path,
        help="training config whose corpora give the pairs (default: the model directory's train_config.json)",
    )
    shortlist.add_argument("--data-dir", help="data directory (default: $MTSERVE_DATA_DIR or ../shared/data)")
    shortlist.set_defaults(handler=_shortlist)
