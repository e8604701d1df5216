"""`mtserve train`, `mtserve eval` and `mtserve data fetch`. torch is imported only when they run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.train_config import add_config_flags


def require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        sys.exit(
            "this command needs the training extra: pip install torch==2.13.0 "
            "--index-url https://download.pytorch.org/whl/cpu && pip install 'mtserve[train]'"
        )


def _load_train_config(args: argparse.Namespace, command: str) -> Any:
    from model.train_config import load_config, overrides_from_args

    overrides = overrides_from_args(args)
    config_file = args.config
    if getattr(args, "resume", False) and config_file is None:
        saved = Path(overrides["out_dir"] or "runs/pilot") / "train_config.json"
        if not saved.is_file():
            sys.exit(f"mtserve {command} --resume: {saved} not found; pass --config or --out-dir of an earlier run")
        cfg_values = json.loads(saved.read_text())
        overrides = {**cfg_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return load_config(config_file, overrides)
    except (ValueError, TypeError) as exc:
        sys.exit(f"mtserve {command}: {exc}")


def _train(args: argparse.Namespace) -> int:
    require_torch()
    from model import corpus
    from model.data_config import ConfigError
    from model.prepare import InitModelError
    from model.train import train

    cfg = _load_train_config(args, "train")
    try:
        data_dir = corpus.resolve_data_dir(cfg.data_dir or None)
        train(cfg, data_dir, resume=args.resume)
    except (FileNotFoundError, ConfigError, InitModelError) as exc:  # bad data, model or checkpoint
        sys.exit(f"mtserve train: {exc}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from model import corpus
    from model.data_config import ConfigError
    from model.prepare import InitModelError, prepare_run

    cfg = _load_train_config(args, "data prepare")
    try:
        print(prepare_run(cfg, corpus.resolve_data_dir(cfg.data_dir or None)))
    except (FileNotFoundError, ConfigError, InitModelError) as exc:
        sys.exit(f"mtserve data prepare: {exc}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    require_torch()
    from model.evaluate import run_eval_command

    return run_eval_command(args)


def _fetch(args: argparse.Namespace) -> int:
    from model.fetch import fetch_all

    fetch_all(Path(args.out))
    return 0


def register(sub: Any) -> None:
    train = sub.add_parser("train", help="train a model (needs the train extra)")
    train.add_argument("--config", type=Path, help="TOML file of TrainConfig keys and the data declaration")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    add_config_flags(train)
    train.set_defaults(handler=_train)

    ev = sub.add_parser("eval", help="BLEU/chrF and masked-LM accuracy of a model directory")
    ev.add_argument("--model", type=Path, default=None, help="model directory (default: the committed model)")
    ev.add_argument(
        "--config",
        type=Path,
        help="training config whose splits --split names (default: the model's train_config.json)",
    )
    ev.add_argument("--split", default="test2016", help="a [[heldout]] name, CORPUS-dev, CORPUS-test, or SRC,REF files")
    ev.add_argument("--direction", help="e.g. en-fr (default: the model's first direction)")
    ev.add_argument("--beam-size", type=int, default=5)
    ev.add_argument("--length-penalty", type=float, default=1.0)
    ev.add_argument("--batch-size", type=int, default=64, help="sentences per decoding batch")
    ev.add_argument("--limit", type=int, default=0, help="evaluate only the first N sentences")
    ev.add_argument("--data-dir", help="data directory (default: $MTSERVE_DATA_DIR or ../shared/data)")
    ev.add_argument("--no-mlm", action="store_true", help="skip the masked-LM accuracy")
    ev.add_argument("--output", type=Path, help="write hypotheses here, one per line")
    ev.add_argument("--no-write", action="store_true", help="print only; leave eval.json alone")
    ev.set_defaults(handler=_eval)

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download the shared data from its public origins")
    fetch.add_argument("--out", required=True, help="directory to write the data layout into")
    fetch.set_defaults(handler=_fetch)
    prepare = data_sub.add_parser("prepare", help="train the tokenizer and tokenise every corpus into shards")
    prepare.add_argument("--config", type=Path, required=True, help="the training config that declares the data")
    add_config_flags(prepare)
    prepare.set_defaults(handler=_prepare)
