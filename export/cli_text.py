"""The commands' text arguments: LANG=FILE and SRC-TGT=SOURCE_FILE,TARGET_FILE values, read whole, or
one line on exit naming the flag, value or file that cannot be used."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def sentences_by_language(specs: Sequence[str], flag: str, command: str, example: str) -> dict[str, list[str]]:
    """`flag`'s LANG=FILE values as language -> the files' non-empty lines (plain or gzip text).
    Exits with one line naming the flag, value or file where one cannot be used."""
    from model import corpus

    texts: dict[str, list[str]] = {}
    for spec in specs:
        language, _, name = spec.partition("=")
        if not language or not name:
            sys.exit(f"mtserve {command}: {flag} {spec!r}: expected LANG=FILE, e.g. {example}")
        try:
            lines = corpus.read_lines(Path(name))
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            sys.exit(f"mtserve {command}: {flag} {language}={name}: cannot read it ({exc})")
        sentences = [line.strip() for line in lines if line.strip()]
        if not sentences:
            sys.exit(f"mtserve {command}: {flag} {language}={name}: no sentence in it")
        texts.setdefault(language, []).extend(sentences)
    return texts


def parallel_text(specs: Sequence[str], flag: str, command: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """`flag`'s SRC-TGT=SOURCE_FILE,TARGET_FILE values as (source, target) language -> sentence pairs
    (plain or gzip text, line by line). Exits with one line naming the flag, value or file where one
    cannot be used."""
    from model import corpus

    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for spec in specs:
        direction, _, files = spec.partition("=")
        source_lang, _, target_lang = direction.partition("-")
        names = files.split(",")
        if not source_lang or not target_lang or len(names) != 2:
            sys.exit(
                f"mtserve {command}: {flag} {spec!r}: expected SRC-TGT=SOURCE_FILE,TARGET_FILE, e.g. en-fr=a.en,a.fr"
            )
        sides = []
        for name in names:
            try:
                sides.append(corpus.read_lines(Path(name)))
            except (OSError, EOFError, UnicodeDecodeError) as exc:
                sys.exit(f"mtserve {command}: {flag} {direction}={name}: cannot read it ({exc})")
        if len(sides[0]) != len(sides[1]):
            sys.exit(
                f"mtserve {command}: {flag} {spec!r}: {len(sides[0])} source lines but {len(sides[1])} target lines"
            )
        pairs.setdefault((source_lang, target_lang), []).extend(zip(*sides, strict=True))
    return pairs
