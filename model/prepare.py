"""`mtserve data prepare`: the tokenizer, then every declared corpus tokenised once into shards.

The run directory gets `spm.model` (trained here unless it is already there: a resumed run,
or a model given to `--init-from`) and `data/`: per corpus a source and a target shard
(model/shards.py), per language one shard of masked-LM sentences, and `prepared.json`, which
records what they were made from. Training reads the shards through memory maps, so its
memory does not grow with the corpora; a second `train` or `prepare` with the same data,
tokenizer and settings reuses them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from model import corpus
from model.augment import copy_pairs
from model.config import ModelConfig
from model.data_config import DataConfig, check_files, fingerprint
from model.shards import Shard, ShardWriter
from model.tokenizer import TOKENIZER_SAMPLE, load_tokenizer, train_tokenizer
from model.train_config import TrainConfig
from service.conventions import CONFIG_FILE, TOKENIZER_FILE
from service.manifest import sha256_file

log = logging.getLogger("mtserve.prepare")
T = TypeVar("T")

DATA_SUBDIR = "data"
PREPARED_FILE = "prepared.json"
FORMAT_VERSION = 1
CHUNK = 20_000  # sentences tokenised per call


@dataclass(frozen=True)
class ShardedCorpus:
    name: str
    langs: tuple[str, str]
    views: int  # 2: trained in both directions
    weight: float
    src: Shard
    tgt: Shard


@dataclass(frozen=True)
class PreparedData:
    corpora: list[ShardedCorpus]
    mono: dict[str, Shard]  # language -> its masked-LM sentences


def _reservoir(items: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform sample of `size` items from a stream of unknown length (all, if it is shorter)."""
    rng = random.Random(seed)
    sample: list[str] = []
    for i, item in enumerate(items):
        if i < size:
            sample.append(item)
        else:
            j = rng.randrange(i + 1)
            if j < size:
                sample[j] = item
    return sample


class _Progress:
    """Sentences per second and the count so far, logged every few seconds."""

    def __init__(self, what: str) -> None:
        self.what, self.count, self.start, self.last = what, 0, time.monotonic(), time.monotonic()

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last > 10:
            log.info("%s: %d sentences, %.0f/s", self.what, self.count, self.count / (now - self.start))
            self.last = now


def _chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_pairs(path: Path, pairs: Iterable[corpus.Pair]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:  # normalised text holds no tab or line break
            handle.write(f"{pair.src}\t{pair.tgt}\n")
            count += 1
    return count


def _read_column(path: Path, column: int) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield line.rstrip("\n").split("\t")[column]


def _tokenise(sp: Any, lines: Iterator[str], stem: Path, vocab_size: int, progress: _Progress) -> int:
    writer = ShardWriter(stem, vocab_size)
    for chunk in _chunks(lines):
        writer.add(sp.encode(chunk))
        progress.add(len(chunk))
    return writer.close()


def _settings(data: DataConfig, data_dir: Path, vocab_size: int, seed: int, copy_spans: float) -> dict[str, Any]:
    """What the shards depend on, in the form prepared.json stores it (JSON: tuples become lists)."""
    settings = {
        "format_version": FORMAT_VERSION,
        "inputs": fingerprint(data, data_dir),
        "vocab_size": vocab_size,
        "seed": seed,
        "copy_spans": copy_spans,
    }
    return dict(json.loads(json.dumps(settings)))


def prepare_data(
    data: DataConfig, data_dir: Path, out_dir: Path, vocab_size: int, seed: int, copy_spans: float = 0.0
) -> Path:
    """Tokenizer and shards in `out_dir`, made once; returns the shard directory."""
    check_files(data, data_dir)
    root = out_dir / DATA_SUBDIR
    spm_path = out_dir / TOKENIZER_FILE
    settings = _settings(data, data_dir, vocab_size, seed, copy_spans)
    record = root / PREPARED_FILE
    if record.is_file() and spm_path.is_file():
        done = json.loads(record.read_text())
        if done.get("settings") == settings and done.get("tokenizer_sha256") == sha256_file(spm_path):
            log.info("reusing the shards in %s", root)
            return root
    if root.exists():
        shutil.rmtree(root)
    work = root / "text"
    work.mkdir(parents=True)
    started = time.monotonic()
    held = corpus.held_sentences(data, data_dir)
    log.info("%d held-out sentences kept out of training", len(held))

    corpora: list[dict[str, Any]] = []
    for index, spec in enumerate(data.corpora):
        pairs_file = work / f"{spec.name}.pairs.tsv"
        entries = [(spec.name, spec.weight, _write_pairs(pairs_file, corpus.training_pairs(spec, data_dir, held)))]
        if copy_spans > 0 and spec.weight > 0:  # synthetic copy pairs (model/augment.py), once per epoch
            rng = np.random.default_rng([seed, index])
            chunks = _chunks(_read_pairs(pairs_file))
            copies = (pair for chunk in chunks for pair in copy_pairs(chunk, copy_spans, rng))
            name = f"{spec.name}+copies"
            entries.append((name, 1.0, _write_pairs(work / f"{name}.pairs.tsv", copies)))
        for name, weight, count in entries:
            corpora.append({"name": name, "langs": list(spec.langs), "views": len(spec.pairs), "weight": weight,
                            "pairs": count})  # fmt: skip
            log.info("corpus %s: %d training pairs", name, count)

    mono_counts: dict[str, int] = {}
    with contextlib.ExitStack() as files:
        handles: dict[str, Any] = {}
        written = {spec.name: work / f"{spec.name}.pairs.tsv" for spec in data.corpora}
        # the corpora's sides come from the pairs just written, not from cleaning every corpus again
        for lang, sentence in corpus.monolingual_sentences(
            data, data_dir, held, lambda c: _read_pairs(written[c.name])
        ):
            if lang not in handles:
                handles[lang] = files.enter_context(open(work / f"mono.{lang}.txt", "w", encoding="utf-8"))
                mono_counts[lang] = 0
            handles[lang].write(sentence + "\n")
            mono_counts[lang] += 1

    if not spm_path.is_file():
        log.info("training a %d-piece SentencePiece model on the %s languages", vocab_size, ", ".join(data.languages))
        sample = _reservoir(_all_mono(work, data.languages), TOKENIZER_SAMPLE, seed)
        train_tokenizer(sample, spm_path, vocab_size, data.languages, seed=seed)
        del sample
    sp = load_tokenizer(spm_path)
    progress = _Progress("tokenising")
    for entry in corpora:
        pairs_file = work / f"{entry['name']}.pairs.tsv"
        for side, column in (("src", 0), ("tgt", 1)):
            _tokenise(sp, _read_column(pairs_file, column), root / entry["name"] / side, vocab_size, progress)
    for lang in mono_counts:
        _tokenise(sp, _read_column(work / f"mono.{lang}.txt", 0), root / f"mono.{lang}" / "mlm", vocab_size, progress)
    shutil.rmtree(work)
    record.write_text(
        json.dumps(
            {"settings": settings, "tokenizer_sha256": sha256_file(spm_path), "corpora": corpora, "mono": mono_counts,
             "seconds": round(time.monotonic() - started, 1)},
            indent=2,
        ) + "\n"
    )  # fmt: skip
    log.info("prepared %s in %.0f s (%d sentences tokenised)", root, time.monotonic() - started, progress.count)
    return root


def _read_pairs(path: Path) -> Iterator[corpus.Pair]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            src, tgt = line.rstrip("\n").split("\t")
            yield corpus.Pair(src, tgt)


def _all_mono(work: Path, languages: Iterable[str]) -> Iterator[str]:
    for lang in languages:
        path = work / f"mono.{lang}.txt"
        if path.is_file():
            yield from _read_column(path, 0)


class InitModelError(ValueError):
    """`--init-from` names a model this config cannot continue."""


def init_model_config(cfg: TrainConfig) -> ModelConfig:
    """The base model's config, checked: it exists and has every language the data config names."""
    base = Path(cfg.init_from)
    for name in (CONFIG_FILE, TOKENIZER_FILE):
        if not (base / name).is_file():
            raise FileNotFoundError(f"--init-from {base}: no {name}; expected a model directory from `mtserve train`")
    init = ModelConfig.load(base / CONFIG_FILE)
    missing = [lang for lang in cfg.data.languages if lang not in init.languages]
    if missing:
        raise InitModelError(
            f"--init-from {base}: the model has no {', '.join(missing)}; its languages are {', '.join(init.languages)}"
        )
    return init


def prepare_run(cfg: TrainConfig, data_dir: Path) -> Path:
    """A run directory's tokenizer and shards: the base model's tokenizer when fine-tuning."""
    out_dir = Path(cfg.out_dir)
    if cfg.init_from:
        init_model_config(cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / TOKENIZER_FILE).exists():
            shutil.copyfile(Path(cfg.init_from) / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    return prepare_data(cfg.data, data_dir, out_dir, cfg.vocab_size, cfg.seed, cfg.copy_spans)


def load_prepared(root: Path, vocab_size: int) -> PreparedData:
    record = json.loads((root / PREPARED_FILE).read_text())
    corpora = [
        ShardedCorpus(
            name=entry["name"], langs=(entry["langs"][0], entry["langs"][1]), views=entry["views"],
            weight=entry["weight"], src=Shard(root / entry["name"] / "src", vocab_size),
            tgt=Shard(root / entry["name"] / "tgt", vocab_size),
        )
        for entry in record["corpora"]
    ]  # fmt: skip
    mono = {lang: Shard(root / f"mono.{lang}" / "mlm", vocab_size) for lang in record["mono"]}
    return PreparedData(corpora, mono)
