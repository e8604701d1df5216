"""The data the model trains on: declared in the config, clean, deduplicated, and free of held-out sentences."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from model import corpus
from model.data_config import ConfigError, DataConfig, check_files, parse_data_config
from model.train_config import load_config
from service.textnorm import normalize, scrub
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def default_data() -> DataConfig:
    return load_config(ROOT / "configs" / "default.toml", {}).data


@pytest.fixture(scope="module")
def held(default_data: DataConfig, shared_data: Path) -> set[str]:
    return corpus.held_sentences(default_data, shared_data)


def test_the_default_config_declares_todays_data(default_data: DataConfig) -> None:
    assert default_data.languages == ("en", "fr")
    assert [(c.name, c.weight, c.directions) for c in default_data.corpora] == [
        ("multi30k", 2.0, "both"),
        ("tatoeba", 1.0, "both"),
    ]
    assert default_data.directions == [("en", "fr"), ("fr", "en")]
    assert default_data.split_names == ["test2016", "val", "tatoeba-dev", "tatoeba-test"]
    assert load_config(ROOT / "configs" / "pilot.toml", {}).data == default_data


def test_held_out_sentences_never_reach_training(default_data: DataConfig, shared_data: Path, held: set[str]) -> None:
    """Every sentence of every split, in both languages, is absent from every corpus's training
    pairs (either side) and from the masked-LM sentences."""
    split_sentences = set()
    for split in default_data.split_names:
        sources, targets = corpus.split_texts(default_data, shared_data, split, default_data.split_langs(split))
        split_sentences |= set(sources) | set(targets)
    assert len(split_sentences) > 8000 and split_sentences <= held
    for spec in default_data.corpora:
        pairs = list(corpus.training_pairs(spec, shared_data, held))
        assert len(pairs) > 20_000
        assert not any(p.src in split_sentences or p.tgt in split_sentences for p in pairs), spec.name
    mono = list(corpus.monolingual_sentences(default_data, shared_data, held))
    assert {lang for lang, _ in mono} == {"en", "fr"}
    assert not split_sentences & {s for _, s in mono}


def test_corpus_splits_are_disjoint_and_fixed(default_data: DataConfig, shared_data: Path, held: set[str]) -> None:
    tatoeba = default_data.corpora[1]
    dev, test = (corpus.split_texts(default_data, shared_data, f"tatoeba-{s}", ("en", "fr")) for s in ("dev", "test"))
    assert len(dev[0]) > 2000 and len(test[0]) > 2000
    assert len(set(dev[0])) == len(set(test[0])) == 2000  # 2,000 source sentences, with all their translations
    assert not set(dev[0]) & set(test[0])
    train = {s for p in corpus.training_pairs(tatoeba, shared_data, held) for s in (p.src, p.tgt)}
    assert not train & (set(dev[0]) | set(test[0]))
    # The split is a pure function of the data and the fixed seed, not of the process.
    assert corpus.split_texts(default_data, shared_data, "tatoeba-test", ("en", "fr")) == test
    # The other direction reads the same pairs the other way round.
    assert corpus.split_texts(default_data, shared_data, "tatoeba-test", ("fr", "en")) == (test[1], test[0])


def test_training_pairs_are_normalised_and_unique(default_data: DataConfig, shared_data: Path, held: set[str]) -> None:
    for spec in default_data.corpora:
        pairs = list(corpus.training_pairs(spec, shared_data, held))
        assert len(pairs) == len(set(pairs))
        assert all(p.src == normalize(p.src) and p.tgt == normalize(p.tgt) and p.src and p.tgt for p in pairs)


def test_normalize_unifies_spaces_and_apostrophes() -> None:
    assert normalize("  L\u2019homme\u00a0dit\u202f: «\u2009oui\u2009»  ") == "L'homme dit : « oui »"
    assert normalize("e\u0301te\u0301\u200b") == "été"


def test_scrub_drops_lone_surrogates_and_blanks_controls() -> None:
    assert scrub("A \ud800dog\udfff runs.") == "A dog runs."
    assert scrub("été\ud83d, 🐕") == "été, 🐕"
    assert scrub("a\x00b\x1fc\x7fd\x85e") == "a b c d e"
    assert scrub("line\tone\nline two\r\n") == "line\tone\nline two\r\n"
    assert scrub("Deux chiens jouent à la neige, l'été. " * 3000) == "Deux chiens jouent à la neige, l'été. " * 3000


def test_data_dir_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MTSERVE_DATA_DIR"):
        corpus.resolve_data_dir(tmp_path / "missing")


def _write(path: Path, lines: list[str], gz: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text) if gz else text)


@pytest.fixture
def user_data(tmp_path: Path) -> Path:
    """A user's own files: plain text and gzip, a TSV with an extra column, a glob of monolingual files."""
    _write(tmp_path / "tm.src", ["Hello.", "Good night."], gz=False)
    _write(tmp_path / "tm.tgt", ["Bonjour.", "Bonne nuit."], gz=False)
    _write(tmp_path / "memory.tsv.gz", ["Thanks.\tMerci.\tsource: app", "Yes.\tOui."])
    _write(tmp_path / "mono/a.txt.gz", ["A dog."])
    _write(tmp_path / "mono/b.txt.gz", ["A cat."])
    return tmp_path


GOOD = {
    "languages": ["en", "fr"],
    "corpora": [
        {"name": "tm", "source": "tm.src", "target": "tm.tgt", "langs": ["en", "fr"]},
        {"name": "memory", "tsv": "memory.tsv.gz", "langs": ["en", "fr"], "directions": "forward"},
    ],
    "monolingual": [{"name": "extra", "files": ["mono/*.txt.gz"], "lang": "en"}],
}


def test_a_users_own_files_read_as_declared(user_data: Path) -> None:
    data = parse_data_config(GOOD)
    check_files(data, user_data)
    tm, memory = data.corpora
    assert list(corpus.corpus_pairs(tm, user_data)) == [corpus.Pair("Hello.", "Bonjour."),
                                                         corpus.Pair("Good night.", "Bonne nuit.")]  # fmt: skip
    assert [p.tgt for p in corpus.corpus_pairs(memory, user_data)] == ["Merci.", "Oui."]
    assert data.directions == [("en", "fr"), ("fr", "en")] and memory.pairs == [("en", "fr")]
    mono = [s for lang, s in corpus.monolingual_sentences(data, user_data, set()) if lang == "en"]
    assert mono[-2:] == ["A dog.", "A cat."]  # after the corpora's English sides, in glob order


def _with(section: str, index: int, **changes: object) -> dict[str, object]:
    entries = [dict(e) for e in GOOD[section]]  # type: ignore[attr-defined]
    entries[index].update(changes)
    for key, value in list(entries[index].items()):
        if value is None:
            del entries[index][key]
    return {**GOOD, section: entries}


@pytest.mark.parametrize(
    ("config", "entry", "key", "problem"),
    [
        (_with("corpora", 0, weigth=2.0), "'tm'", "weigth", "unknown key"),
        (_with("corpora", 1, langs=["en", "de"]), "'memory'", "langs", "'de' is not in languages"),
        (_with("corpora", 0, source=None, target=None), "'tm'", "source", "give source and target files, or one tsv"),
        (_with("corpora", 1, source="tm.src"), "'memory'", "tsv", "either source/target or tsv"),
        (_with("corpora", 0, directions="backward"), "'tm'", "directions", "must be one of"),
        (_with("monolingual", 0, lang="de"), "'extra'", "lang", "'de' is not in languages"),
        ({**GOOD, "validation": "nope"}, None, "validation", "none of the splits"),
    ],
)
def test_each_bad_declaration_names_the_corpus_and_the_key(
    config: dict[str, object], entry: str | None, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        parse_data_config(config)
    message = str(caught.value)
    assert f"key {key!r}" in message
    if entry:
        assert entry in message


def test_missing_files_and_misaligned_files_are_named_before_reading(user_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[\[corpora\]\] 'tm', key 'target': file .*tm\.fr not found"):
        check_files(parse_data_config(_with("corpora", 0, target="tm.fr")), user_data)
    _write(user_data / "short.tgt", ["Bonjour."], gz=False)
    with pytest.raises(ConfigError, match=r"'tm', key 'target': 1 lines but source has 2: .*not line-aligned"):
        check_files(parse_data_config(_with("corpora", 0, target="short.tgt")), user_data)
    with pytest.raises(
        ConfigError, match=r"\[\[monolingual\]\] 'extra', key 'files': .*nothing/\*\.gz matches no file"
    ):
        check_files(parse_data_config(_with("monolingual", 0, files=["nothing/*.gz"])), user_data)
    with pytest.raises(ConfigError, match=r"\[\[corpora\]\] 'tm', key 'source': file .*absent not found"):
        check_files(parse_data_config(_with("corpora", 0, source=str(user_data / "absent"))), user_data)


def test_the_train_command_reports_a_bad_config_before_training(tmp_path: Path) -> None:
    from service.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(
        'max_steps = 1\nlanguages = ["en", "fr"]\n[[corpora]]\nname = "mine"\ntsv = "x.tsv"\nlangs = ["en", "xx"]\n'
    )
    with pytest.raises(SystemExit, match=r"\[\[corpora\]\] 'mine', key 'langs': language 'xx' is not in languages"):
        main(["train", "--config", str(bad), "--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
