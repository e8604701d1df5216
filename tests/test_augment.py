"""Copy augmentation builds pairs whose only right translation of the span is a copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.augment import copy_pairs, shared_tokens
from model.corpus import Pair


def test_shared_tokens_are_names_and_numbers_on_both_sides() -> None:
    assert shared_tokens(Pair("Tom bought 3 apples in Boston.", "Tom a acheté 3 pommes à Boston.")) == ["3", "Boston"]
    assert shared_tokens(Pair("The dog runs.", "Le chien court.")) == []


def test_copy_pairs_put_the_same_span_on_both_sides() -> None:
    pairs = [Pair("I met Tom in Paris yesterday.", "J'ai rencontré Tom à Paris hier."), Pair("A dog.", "Un chien.")]
    out = copy_pairs(pairs, rate=50.0, rng=np.random.default_rng(0))
    assert len(out) == 50  # only the first pair has shared tokens
    words = pairs[0].src.split()
    for pair in out:
        (replaced,) = [t for t in ("Tom", "Paris") if t not in pair.src.split()]
        span = pair.src.split()[words.index(replaced)]
        assert pair.src == pairs[0].src.replace(replaced, span)
        assert pair.tgt == pairs[0].tgt.replace(replaced, span)
    spans = {p.src for p in out}
    assert any("http" in s or "www." in s for s in spans) and any("@" in s for s in spans)
    assert any(any(c.isdigit() for c in s) for s in spans)


def test_copy_pairs_are_deterministic_for_a_seed() -> None:
    pairs = [Pair("Tom has 12 cats.", "Tom a 12 chats.")] * 10
    assert copy_pairs(pairs, 1.5, np.random.default_rng(3)) == copy_pairs(pairs, 1.5, np.random.default_rng(3))


def test_training_data_gains_a_copies_corpus_with_copy_spans(tiny_data_dir: Path, tmp_path: Path) -> None:
    from model.prepare import load_prepared, prepare_data
    from tests.conftest import tiny_config

    data = tiny_config(tmp_path, tiny_data_dir)["data"]
    sizes = {}
    for rate in (0.0, 2.0):
        root = prepare_data(data, tiny_data_dir, tmp_path / str(rate), vocab_size=400, seed=7, copy_spans=rate)  # type: ignore[arg-type]
        sizes[rate] = {c.name: len(c.src) for c in load_prepared(root, 400).corpora}
    assert "multi30k+copies" not in sizes[0.0]
    assert sizes[2.0]["multi30k"] == sizes[0.0]["multi30k"] and sizes[2.0]["multi30k+copies"] > 0
    assert "tatoeba+copies" not in sizes[2.0]  # weight 0: no copies of a corpus that does not train
