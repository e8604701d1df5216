"""Reading the corpora a data config declares (model/data_config.py) as clean sentence pairs.

Everything streams: no function here holds a corpus in memory, except the source sentences
of a corpus that carves dev and test splits out of itself (`heldout = N`).

Text is NFC-normalised with one kind of space and straight apostrophes (service/textnorm.py);
empty pairs are dropped and repeated pairs kept once. Every sentence of every [[heldout]] split
and of every corpus's dev and test split is kept out of all training data, in both languages.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from model.data_config import Corpus, DataConfig, Heldout, Monolingual, ParallelFiles, expand, open_text, resolve
from service.textnorm import normalize

DATA_DIR_ENV = "MTSERVE_DATA_DIR"
DEFAULT_DATA_DIR = Path("../shared/data")
SPLIT_SEED = 20261128  # fixes which source sentences a corpus's dev and test splits take


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str


def resolve_data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the flag if given, else $MTSERVE_DATA_DIR, else ../shared/data."""
    path = Path(flag or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {path} does not exist; pass --data-dir or set "
            f"{DATA_DIR_ENV}, or download the data with `mtserve data fetch --out DIR`"
        )
    return path


def read_lines(path: Path) -> list[str]:
    return list(open_text(path))


def _digest(*texts: str) -> bytes:
    return hashlib.blake2b("\t".join(texts).encode("utf-8"), digest_size=8).digest()


def raw_pairs(entry: ParallelFiles, data_dir: Path) -> Iterator[tuple[str, str]]:
    if entry.tsv:
        for line in open_text(resolve(entry.tsv, data_dir)):
            columns = line.split("\t")
            if len(columns) >= 2:
                yield columns[0], columns[1]
        return
    sources = open_text(resolve(entry.source, data_dir))
    targets = open_text(resolve(entry.target, data_dir))
    yield from zip(sources, targets, strict=True)


def clean_pairs(pairs: Iterable[tuple[str, str]]) -> Iterator[Pair]:
    for src, tgt in pairs:
        src, tgt = normalize(src), normalize(tgt)
        if src and tgt:
            yield Pair(src, tgt)


def unique(pairs: Iterable[Pair]) -> Iterator[Pair]:
    """First occurrences only; remembers 8 bytes per pair, not the text."""
    seen: set[bytes] = set()
    for pair in pairs:
        key = _digest(pair.src, pair.tgt)
        if key not in seen:
            seen.add(key)
            yield pair


def corpus_pairs(corpus: Corpus, data_dir: Path) -> Iterator[Pair]:
    """Every clean, distinct pair of a corpus, in file order."""
    return unique(clean_pairs(raw_pairs(corpus, data_dir)))


def split_sources(corpus: Corpus, data_dir: Path) -> dict[str, set[str]]:
    """The source sentences of a corpus's dev and test splits: `heldout` each, drawn with a fixed
    seed from its sorted distinct source sentences, so the split depends on the data alone."""
    if not corpus.heldout:
        return {}
    sources = sorted({p.src for p in corpus_pairs(corpus, data_dir)})
    random.Random(SPLIT_SEED).shuffle(sources)
    n = corpus.heldout
    return {"dev": set(sources[:n]), "test": set(sources[n : 2 * n])}


@functools.lru_cache(maxsize=4)
def corpus_splits(corpus: Corpus, data_dir: Path) -> dict[str, list[Pair]]:
    """A corpus's dev and test splits: every pair whose source sentence the split took (two
    passes over the corpus; kept for the next caller, as splits are small)."""
    chosen = split_sources(corpus, data_dir)
    out: dict[str, list[Pair]] = {split: [] for split in chosen}
    if chosen:
        for pair in corpus_pairs(corpus, data_dir):
            for split, sources in chosen.items():
                if pair.src in sources:
                    out[split].append(pair)
    return out


def heldout_pairs(heldout: Heldout, data_dir: Path) -> list[Pair]:
    """A [[heldout]] split, clean, in file order (repeats kept: it is scored as it is)."""
    return list(clean_pairs(raw_pairs(heldout, data_dir)))


def held_sentences(cfg: DataConfig, data_dir: Path) -> set[str]:
    """Every sentence, in either language, that training must never see."""
    held: set[str] = set()
    for heldout in cfg.heldout:
        for pair in heldout_pairs(heldout, data_dir):
            held |= {pair.src, pair.tgt}
    for corpus in cfg.corpora:
        for pairs in corpus_splits(corpus, data_dir).values():
            for pair in pairs:
                held |= {pair.src, pair.tgt}
    return held


def training_pairs(corpus: Corpus, data_dir: Path, held: set[str]) -> Iterator[Pair]:
    """A corpus's training pairs: clean, distinct, and with no held-out sentence on either side."""
    for pair in corpus_pairs(corpus, data_dir):
        if pair.src not in held and pair.tgt not in held:
            yield pair


def monolingual_lines(mono: Monolingual, data_dir: Path) -> Iterator[str]:
    """Normalised lines of a monolingual entry's files, in glob order; empty lines kept (as '')."""
    for pattern in mono.files:
        for path in expand(pattern, data_dir):
            for line in open_text(path):
                yield normalize(line)


def first_pairs_by_language(cfg: DataConfig, data_dir: Path, held: set[str], per_corpus: int) -> dict[str, list[str]]:
    """Both sides of the first `per_corpus` training pairs of each corpus, by language: sentences
    of every corpus's own kind, none held out (int8 calibration, export/calibrate.py)."""
    chosen: dict[str, list[str]] = {}
    for corpus in cfg.corpora:
        source, target = corpus.langs
        for pair in itertools.islice(training_pairs(corpus, data_dir, held), per_corpus):
            chosen.setdefault(source, []).append(pair.src)
            chosen.setdefault(target, []).append(pair.tgt)
    return chosen


def monolingual_sentences(
    cfg: DataConfig, data_dir: Path, held: set[str], pairs_of: Callable[[Corpus], Iterable[Pair]] | None = None
) -> Iterator[tuple[str, str]]:
    """(language, sentence) for masked-LM training: both sides of every corpus's training pairs, then
    the monolingual files; each sentence once per language, none held out. `pairs_of` gives a
    corpus's training pairs where they are already at hand (default: read them again)."""
    seen: set[bytes] = set()

    def fresh(lang: str, sentence: str) -> bool:
        key = _digest(lang, sentence)
        if not sentence or sentence in held or key in seen:
            return False
        seen.add(key)
        return True

    for corpus in cfg.corpora:
        src_lang, tgt_lang = corpus.langs
        pairs = pairs_of(corpus) if pairs_of else training_pairs(corpus, data_dir, held)
        for pair in pairs:
            if fresh(src_lang, pair.src):
                yield src_lang, pair.src
            if fresh(tgt_lang, pair.tgt):
                yield tgt_lang, pair.tgt
    for mono in cfg.monolingual:
        for sentence in monolingual_lines(mono, data_dir):
            if fresh(mono.lang, sentence):
                yield mono.lang, sentence


def split_texts(cfg: DataConfig, data_dir: Path, split: str, direction: tuple[str, str]) -> tuple[list[str], list[str]]:
    """Source and reference sentences of a named split (a [[heldout]] or `<corpus>-dev`/`-test`)."""
    langs = cfg.split_langs(split)
    pairs: list[Pair] = []
    for heldout in cfg.heldout:
        if heldout.name == split:
            pairs = heldout_pairs(heldout, data_dir)
    for corpus in cfg.corpora:
        for suffix in ("dev", "test"):
            if corpus.heldout and f"{corpus.name}-{suffix}" == split:
                pairs = corpus_splits(corpus, data_dir)[suffix]
    if direction == langs:
        return [p.src for p in pairs], [p.tgt for p in pairs]
    if direction == (langs[1], langs[0]):
        return [p.tgt for p in pairs], [p.src for p in pairs]
    raise ValueError(f"split {split!r} is {langs[0]}-{langs[1]}; it has no {direction[0]}-{direction[1]} side")
