"""Reading the English–French corpora from a data directory.

Layout (the one `mtserve data fetch` writes, and the one under ../shared/data):

    multi30k/{train,val,test_2016_flickr}.{en,fr}.gz
    multi30k/captions-en/train.{1..5}.en.gz
    tatoeba/eng-fra.tsv.gz
"""

from __future__ import annotations

import functools
import gzip
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service.textnorm import normalize

DATA_DIR_ENV = "MTSERVE_DATA_DIR"
DEFAULT_DATA_DIR = Path("../shared/data")

MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}
TATOEBA_HELDOUT = 2000  # sentences in each of the Tatoeba dev and test splits
TATOEBA_SPLIT_SEED = 20261128


@dataclass(frozen=True)
class Pair:
    en: str
    fr: str


def resolve_data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the flag if given, else $MTSERVE_DATA_DIR, else ../shared/data."""
    path = Path(flag or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if not (path / "multi30k").is_dir():
        raise FileNotFoundError(
            f"data directory {path} has no multi30k/ folder; pass --data-dir or set "
            f"{DATA_DIR_ENV}, or download the data with `mtserve data fetch --out DIR`"
        )
    return path


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def _clean_pairs(pairs: Iterable[tuple[str, str]]) -> Iterator[Pair]:
    for en, fr in pairs:
        en, fr = normalize(en), normalize(fr)
        if en and fr:
            yield Pair(en, fr)


def dedupe(pairs: Iterable[Pair]) -> list[Pair]:
    """Drop exact repeats of a pair, keeping first occurrences in order."""
    return list(dict.fromkeys(pairs))


@functools.cache
def multi30k(data_dir: Path, split: str) -> list[Pair]:
    """A Multi30k task-1 split (`train`, `val` or `test2016`), normalised, order kept."""
    stem = data_dir / "multi30k" / MULTI30K_SPLITS[split]
    en = read_lines(stem.with_name(stem.name + ".en.gz"))
    fr = read_lines(stem.with_name(stem.name + ".fr.gz"))
    if len(en) != len(fr):
        raise ValueError(f"{stem}: {len(en)} English lines but {len(fr)} French lines")
    return list(_clean_pairs(zip(en, fr, strict=True)))


@functools.cache
def _tatoeba_all(data_dir: Path) -> list[Pair]:
    rows = (line.split("\t")[:2] for line in read_lines(data_dir / "tatoeba" / "eng-fra.tsv.gz"))
    return dedupe(_clean_pairs((r[0], r[1]) for r in rows if len(r) == 2))


def tatoeba(data_dir: Path, split: str) -> list[Pair]:
    """Tatoeba split by English sentence, so no English sentence straddles two splits.

    dev and test take TATOEBA_HELDOUT English sentences each (with all their
    French translations), drawn with a fixed seed; train takes the rest.
    """
    pairs = _tatoeba_all(data_dir)
    english = sorted({p.en for p in pairs})
    random.Random(TATOEBA_SPLIT_SEED).shuffle(english)
    chosen = {
        "dev": set(english[:TATOEBA_HELDOUT]),
        "test": set(english[TATOEBA_HELDOUT : 2 * TATOEBA_HELDOUT]),
    }
    if split == "train":
        held = chosen["dev"] | chosen["test"]
        return [p for p in pairs if p.en not in held]
    return [p for p in pairs if p.en in chosen[split]]


def evaluation_sentences(data_dir: Path) -> set[str]:
    """Every sentence of the Multi30k val and test2016 splits, both languages."""
    held = multi30k(data_dir, "val") + multi30k(data_dir, "test2016")
    return {p.en for p in held} | {p.fr for p in held}


def training_pairs(data_dir: Path) -> dict[str, list[Pair]]:
    """Parallel training data per source corpus, with evaluation sentences removed."""
    held = evaluation_sentences(data_dir) | {
        s for p in tatoeba(data_dir, "dev") + tatoeba(data_dir, "test") for s in (p.en, p.fr)
    }
    corpora = {
        "multi30k": dedupe(multi30k(data_dir, "train")),
        "tatoeba": tatoeba(data_dir, "train"),
    }
    return {name: [p for p in pairs if p.en not in held and p.fr not in held] for name, pairs in corpora.items()}


def caption_files(data_dir: Path) -> list[list[str]]:
    """The five monolingual English caption files, normalised, line order kept."""
    folder = data_dir / "multi30k" / "captions-en"
    return [[normalize(s) for s in read_lines(folder / f"train.{i}.en.gz")] for i in range(1, 6)]


def monolingual_sentences(data_dir: Path, parallel: dict[str, list[Pair]]) -> dict[str, list[str]]:
    """Unique sentences per language for masked-LM training, evaluation sentences removed."""
    held = evaluation_sentences(data_dir)
    en = [p.en for pairs in parallel.values() for p in pairs]
    en += [s for lines in caption_files(data_dir) for s in lines]
    fr = [p.fr for pairs in parallel.values() for p in pairs]
    return {
        "en": [s for s in dict.fromkeys(en) if s and s not in held],
        "fr": [s for s in dict.fromkeys(fr) if s and s not in held],
    }


def split_texts(data_dir: Path, split: str, direction: tuple[str, str]) -> tuple[list[str], list[str]]:
    """Source and reference sentences of a named evaluation split for one direction."""
    if split in MULTI30K_SPLITS:
        pairs = multi30k(data_dir, split)
    elif split in ("tatoeba-dev", "tatoeba-test"):
        pairs = tatoeba(data_dir, split.removeprefix("tatoeba-"))
    else:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(EVAL_SPLITS)} or SRC,REF files")
    src, tgt = direction
    return [getattr(p, src) for p in pairs], [getattr(p, tgt) for p in pairs]


EVAL_SPLITS = (*MULTI30K_SPLITS, "tatoeba-dev", "tatoeba-test")
