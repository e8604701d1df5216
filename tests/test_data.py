"""The data the model trains on: clean, deduplicated, and free of evaluation sentences."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import corpus
from service.textnorm import normalize


@pytest.fixture(scope="module")
def training(shared_data: Path) -> dict[str, list[corpus.Pair]]:
    return corpus.training_pairs(shared_data)


def test_multi30k_val_and_test2016_never_reach_training(
    shared_data: Path, training: dict[str, list[corpus.Pair]]
) -> None:
    held = corpus.evaluation_sentences(shared_data)
    assert len(held) > 3500
    for pairs in training.values():
        assert not any(p.en in held or p.fr in held for p in pairs)
    mono = corpus.monolingual_sentences(shared_data, training)
    assert not held & set(mono["en"]) and not held & set(mono["fr"])


def test_tatoeba_splits_are_disjoint_and_fixed(shared_data: Path, training: dict[str, list[corpus.Pair]]) -> None:
    dev, test = corpus.tatoeba(shared_data, "dev"), corpus.tatoeba(shared_data, "test")
    assert len(dev) > 2000 and len(test) > 2000
    dev_en, test_en = {p.en for p in dev}, {p.en for p in test}
    assert not dev_en & test_en
    train_sentences = {s for p in training["tatoeba"] for s in (p.en, p.fr)}
    assert not train_sentences & (dev_en | test_en)
    # The split is a pure function of the data and the fixed seed, not of the process.
    corpus._tatoeba_all.cache_clear()
    assert corpus.tatoeba(shared_data, "test") == test


def test_training_pairs_are_normalised_and_unique(training: dict[str, list[corpus.Pair]]) -> None:
    for pairs in training.values():
        assert len(pairs) == len(set(pairs))
        assert all(p.en == normalize(p.en) and p.fr == normalize(p.fr) and p.en and p.fr for p in pairs)


def test_normalize_unifies_spaces_and_apostrophes() -> None:
    assert normalize("  L\u2019homme\u00a0dit\u202f: «\u2009oui\u2009»  ") == "L'homme dit : « oui »"
    assert normalize("e\u0301te\u0301\u200b") == "été"


def test_data_dir_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MTSERVE_DATA_DIR"):
        corpus.resolve_data_dir(tmp_path)
