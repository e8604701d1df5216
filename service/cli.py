"""The `mtserve` command. Each package registers its own subcommands.

Training subcommands need the `train` extra (torch); the rest run without it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Packages whose `cli.register(subparsers)` adds subcommands, in help order.
_COMMAND_MODULES = ("model.cli", "export.cli", "service.runtime_cli", "service.api.server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtserve", description="English–French machine translation service.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in {"model", "export", "service"}:
                continue  # a part not shipped in this install
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
