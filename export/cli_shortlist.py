"""--shortlist on the commands that import models (`mtserve import`, `mtserve pull`): the text read
before the import starts, then each model imported given its shortlist (export/shortlist.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.cli_text import parallel_text, sentences_by_language

if TYPE_CHECKING:
    from export.argos import Outcome


def shortlist_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shortlist",
        type=int,
        metavar="SIZE",
        help="give each model imported a per-sentence output shortlist of SIZE tokens, as `mtserve shortlist` "
        "does (1024 in docs/BENCHMARKS.md: a faster decoder step, about a tenth of a BLEU point), from the text "
        "of --shortlist-pairs or --shortlist-sources in its own directions",
    )
    parser.add_argument(
        "--shortlist-pairs",
        nargs="+",
        metavar="SRC-TGT=SOURCE_FILE,TARGET_FILE",
        help="parallel text for --shortlist, one sentence a line",
    )
    parser.add_argument(
        "--shortlist-sources",
        nargs="+",
        metavar="LANG=FILE",
        help="sentences in LANG for --shortlist, one a line, that each model translating from LANG first "
        "translates itself: its own translations are the pairs (100,000 or more recommended)",
    )


class ImportShortlist:
    """--shortlist SIZE with its text, read before the import starts, then given to each model imported
    (export.shortlist.shortlist_imported)."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        from service.graphs import DECODER_TOP_K

        self.size: int | None = args.shortlist
        self.command = command
        given = bool(args.shortlist_pairs or args.shortlist_sources)
        if self.size is None and given:
            sys.exit(
                f"mtserve {command}: --shortlist-pairs and --shortlist-sources are text for --shortlist SIZE: add it"
            )
        if self.size is not None and not given:
            sys.exit(
                f"mtserve {command}: --shortlist needs text: --shortlist-pairs SRC-TGT=SOURCE_FILE,TARGET_FILE "
                "(parallel text) or --shortlist-sources LANG=FILE (sentences the model translates itself)"
            )
        if self.size is not None and self.size < DECODER_TOP_K:
            sys.exit(f"mtserve {command}: --shortlist {self.size}: at least {DECODER_TOP_K} tokens (the step's top-k)")
        self.parallel = parallel_text(args.shortlist_pairs or [], "--shortlist-pairs", command)
        self.monolingual = sentences_by_language(
            args.shortlist_sources or [], "--shortlist-sources", command, "en=sentences.en"
        )
        self.unused_pairs = set(self.parallel)
        self.unused_sources = set(self.monolingual)

    def added(self, model_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
        """`report` (an import's) with `model_dir`'s shortlist report added, where --shortlist asks for
        one; raises ShortlistError."""
        from export.shortlist import own_text, shortlist_imported
        from service.manifest import load_manifest

        if self.size is None:
            return report
        own_pairs, own_sources = own_text(
            load_manifest(model_dir).model_languages().directions, self.parallel, self.monolingual
        )
        self.unused_pairs -= set(own_pairs)
        self.unused_sources -= set(own_sources)
        return {**report, "shortlist": shortlist_imported(model_dir, self.size, self.parallel, self.monolingual)}

    def added_alone(self, model_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
        """`added` for a command that imports one model."""
        from export.shortlist import ShortlistError

        try:
            report = self.added(model_dir, report)
        except ShortlistError as exc:
            raise ShortlistError(f"imported into {model_dir}, without a shortlist: {exc}") from exc
        self.warn_unused()
        return report

    def warn_unused(self) -> None:
        """One line on stderr for each text no model imported could use (another direction's, a typo)."""
        for source, target in sorted(self.unused_pairs):
            print(f"mtserve {self.command}: --shortlist-pairs {source}-{target}: no model imported translates "
                  f"{source} to {target}; not used", file=sys.stderr)  # fmt: skip
        for language in sorted(self.unused_sources):
            print(f"mtserve {self.command}: --shortlist-sources {language}: no model imported translates from "
                  f"{language}; not used", file=sys.stderr)  # fmt: skip

    def report_outcomes(self, outcomes: Sequence[Outcome]) -> bool:
        """Prints a line per package imported, and with --shortlist a line on its shortlist under each
        one imported; whether every imported package got the shortlist asked for."""
        from export.shortlist import ShortlistError

        complete = True
        for outcome in outcomes:
            print(outcome.line(), flush=True)
            if self.size is None or outcome.out is None:
                continue
            try:
                report = self.added(outcome.out, {})["shortlist"]
            except ShortlistError as exc:
                print(f"  no shortlist: {exc}", flush=True)
                complete = False
                continue
            print(f"  {self.line(report)}", flush=True)
        self.warn_unused()
        return complete

    def line(self, report: dict[str, Any]) -> str:
        """One line on a model's shortlist report: its size, the pairs of each table, any warning."""
        counts: dict[str, int] = report["pairs"]
        pairs = ", ".join(f"{n:,} pairs into {lang}" for lang, n in counts.items())
        warning = f"; {report['warning']}" if "warning" in report else ""
        return f"shortlist of {self.size} tokens a sentence, from {pairs}{warning}"
