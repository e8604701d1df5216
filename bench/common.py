"""What the runtime benchmarks share: their command-line options and the test2016 sentences."""

from __future__ import annotations

import argparse
from pathlib import Path

from model import corpus
from service.manifest import DEFAULT_MODEL_DIR


def runtime_parser(doc: str | None, sentences: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="+", default=[DEFAULT_MODEL_DIR], help="exported model directories")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=sentences, help="first N test2016 sentences")
    parser.add_argument("--data-dir")
    return parser


def english_test_sentences(args: argparse.Namespace) -> list[str]:
    sources, _ = corpus.split_texts(corpus.resolve_data_dir(args.data_dir), "test2016", ("en", "fr"))
    return list(sources[: args.sentences])
