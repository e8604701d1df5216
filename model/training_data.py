"""What training reads: the prepared shards as the batch streams see them, the validation split,
next-sentence captions, and the languages the trained model will declare."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model import batching, corpus
from model.config import ModelConfig
from model.data_config import DataConfig, expand
from model.prepare import DATA_SUBDIR, PreparedData, ShardedCorpus, load_prepared
from model.shards import Shard
from model.tokenizer import load_tokenizer, tag_id
from model.train_config import TrainConfig
from service.conventions import TOKENIZER_FILE
from service.textnorm import normalize


@dataclass
class TrainingData:
    """The shards, the sampler's view of them, and the in-memory validation split."""

    prepared: PreparedData
    translation: list[ShardedCorpus]  # the sources of the translation stream, in its order
    translation_items: list[np.ndarray]  # per source: the pair index of each usable item
    translation_sources: list[batching.SamplingSource]
    mlm: list[Shard]
    mlm_items: list[np.ndarray]
    mlm_sources: list[batching.SamplingSource]
    tags: dict[str, int]
    captions: list[list[list[int]]] = field(default_factory=list)
    validation: list[batching.Example] = field(default_factory=list)

    def translation_examples(self, stream: batching.BatchStream, codes: np.ndarray) -> list[batching.Example]:
        """The examples a batch of the translation stream names, read from the shards."""
        examples = []
        for code in codes.tolist():
            source, item, view = stream.locate(code)
            sharded = self.translation[source]
            pair = int(self.translation_items[source][item])
            src, tgt = sharded.src[pair].tolist(), sharded.tgt[pair].tolist()
            if view == 0:
                examples.append(batching.Example(src=src, tgt=tgt, tag=self.tags[sharded.langs[1]]))
            else:  # the other direction of the same pair
                examples.append(batching.Example(src=tgt, tgt=src, tag=self.tags[sharded.langs[0]]))
        return examples

    def mlm_sentences(self, stream: batching.BatchStream, codes: np.ndarray) -> list[list[int]]:
        out = []
        for code in codes.tolist():
            source, item, _ = stream.locate(code)
            out.append(self.mlm[source][int(self.mlm_items[source][item])].tolist())
        return out


def _usable(lengths: np.ndarray, max_len: int) -> np.ndarray:
    return np.nonzero(lengths < max_len)[0].astype(np.int32 if len(lengths) < 2**31 else np.int64)


def translation_view(
    prepared: PreparedData, max_len: int
) -> tuple[list[ShardedCorpus], list[np.ndarray], list[batching.SamplingSource]]:
    """Every corpus with weight > 0, its pairs with both sides shorter than max_len, their lengths."""
    corpora, items, sources = [], [], []
    for sharded in prepared.corpora:
        if sharded.weight <= 0 or not len(sharded.src):
            continue
        src, tgt = sharded.src.lengths(), sharded.tgt.lengths()
        usable = _usable(np.maximum(src, tgt), max_len)
        lengths = (np.maximum(src[usable], tgt[usable]) + 1).astype(np.uint16)
        corpora.append(sharded)
        items.append(usable)
        sources.append(batching.SamplingSource(lengths, sharded.weight, sharded.views))
    return corpora, items, sources


def mlm_view(
    prepared: PreparedData, max_len: int
) -> tuple[list[Shard], list[np.ndarray], list[batching.SamplingSource]]:
    shards, items, sources = [], [], []
    for shard in prepared.mono.values():
        lengths = shard.lengths()
        usable = _usable(lengths, max_len)
        shards.append(shard)
        items.append(usable)
        sources.append(batching.SamplingSource((lengths[usable] + 1).astype(np.uint16)))
    return shards, items, sources


def _validation_examples(
    data: DataConfig, data_dir: Path, sp: Any, tags: dict[str, int], directions: list[tuple[str, str]], max_len: int
) -> list[batching.Example]:
    split = data.validation_split
    if not split:
        return []
    examples = []
    for direction in directions:
        try:
            sources, targets = corpus.split_texts(data, data_dir, split, direction)
        except ValueError:  # the split does not hold this pair of languages
            continue
        for src, tgt in zip(sp.encode(sources), sp.encode(targets), strict=True):
            if len(src) < max_len and len(tgt) < max_len:
                examples.append(batching.Example(src=src, tgt=tgt, tag=tags[direction[1]]))
    return examples


def _nsp_captions(data: DataConfig, data_dir: Path, sp: Any) -> list[list[list[int]]]:
    """Line-aligned caption files of the first [[monolingual]] entry marked `nsp`, tokenised."""
    for mono in data.monolingual:
        if mono.nsp:
            files = [corpus.read_lines(p) for pattern in mono.files for p in expand(pattern, data_dir)]
            files = [[normalize(s) for s in f] for f in files]
            # A file that lost lines to the val/test filter is no longer line-aligned with the others.
            full = max(len(f) for f in files)
            return [sp.encode(f) for f in files if len(f) == full]
    raise ValueError("nsp_weight > 0 needs a [[monolingual]] entry with nsp = true (line-aligned caption files)")


def load_training_data(cfg: TrainConfig, data_dir: Path, out_dir: Path, languages: ModelLanguagesInfo) -> TrainingData:
    """Shards (prepared on rank 0, once), streams' sources and the validation split."""
    sp = load_tokenizer(out_dir / TOKENIZER_FILE)
    prepared = load_prepared(out_dir / DATA_SUBDIR, cfg.vocab_size)
    corpora, items, sources = translation_view(prepared, cfg.max_len)
    mlm_shards, mlm_items, mlm_sources = mlm_view(prepared, cfg.max_len) if cfg.mlm_weight > 0 else ([], [], [])
    data = TrainingData(
        prepared=prepared,
        translation=corpora,
        translation_items=items,
        translation_sources=sources,
        mlm=mlm_shards,
        mlm_items=mlm_items,
        mlm_sources=mlm_sources,
        tags=languages.tags,
        validation=_validation_examples(cfg.data, data_dir, sp, languages.tags, cfg.data.directions, cfg.max_len),
    )
    if cfg.nsp_weight > 0:
        data.captions = _nsp_captions(cfg.data, data_dir, sp)
    return data


@dataclass(frozen=True)
class ModelLanguagesInfo:
    """The languages the trained model will declare: its tokenizer's tags and its directions."""

    languages: tuple[str, ...]
    directions: tuple[tuple[str, str], ...]
    tags: dict[str, int]


def model_languages(cfg: TrainConfig, sp: Any, init: ModelConfig | None) -> ModelLanguagesInfo:
    """The config's languages, or, when fine-tuning, the base model's (a superset), with its
    directions and the config's together."""
    languages = init.languages if init else cfg.data.languages
    directions = dict.fromkeys([*(init.directions if init else ()), *cfg.data.directions])
    return ModelLanguagesInfo(tuple(languages), tuple(directions), {lang: tag_id(sp, lang) for lang in languages})
