"""Shared fixtures: a tiny data directory cut from ../shared/data and a tiny model trained on it."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.corpus import DEFAULT_DATA_DIR, read_lines
from model.data_config import parse_data_config
from service.conventions import FIRST_LANGUAGE_TAG_ID

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MTSERVE_DATA_DIR", ROOT / DEFAULT_DATA_DIR))
# The graphs' packed copies (service/runtime/packed.py) go to a directory of the test run's own,
# shared by every test and every server it starts, not to the user's cache.
PACKED_DIR = tempfile.mkdtemp(prefix="mtserve-packed-tests-")
os.environ["MTSERVE_PACKED_DIR"] = PACKED_DIR


@pytest.fixture(scope="session", autouse=True)
def _remove_packed_copies() -> Iterator[None]:
    yield
    shutil.rmtree(PACKED_DIR, ignore_errors=True)


TINY_PAIRS = 200
# The tiny models' languages, in config order: their tags follow the control symbols.
TAG = {"en": FIRST_LANGUAGE_TAG_ID, "fr": FIRST_LANGUAGE_TAG_ID + 1}
# The tiny data directory's declaration: the default config's layout at a smaller scale.
TINY_DATA_TOML = """
languages = ["en", "fr"]
validation = "val"

[[corpora]]
name = "multi30k"
source = "multi30k/train.en.gz"
target = "multi30k/train.fr.gz"
langs = ["en", "fr"]

[[corpora]]
name = "tatoeba"
tsv = "tatoeba/eng-fra.tsv.gz"
langs = ["en", "fr"]
weight = 0.0
heldout = 40

[[monolingual]]
name = "captions"
files = ["multi30k/captions-en/train.*.en.gz"]
lang = "en"
nsp = true

[[heldout]]
name = "test2016"
source = "multi30k/test_2016_flickr.en.gz"
target = "multi30k/test_2016_flickr.fr.gz"
langs = ["en", "fr"]

[[heldout]]
name = "val"
source = "multi30k/val.en.gz"
target = "multi30k/val.fr.gz"
langs = ["en", "fr"]
"""


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "multi30k").is_dir():
        pytest.fail(f"no data directory at {SHARED_DATA}: set MTSERVE_DATA_DIR or run `mtserve data fetch`")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real layout with 200 training pairs; short sentences so a tiny model can memorise them."""
    out = tmp_path_factory.mktemp("tiny-data")
    m30k = shared_data / "multi30k"
    en, fr = read_lines(m30k / "train.en.gz"), read_lines(m30k / "train.fr.gz")
    short = [i for i in range(len(en)) if len(en[i]) < 45 and len(fr[i]) < 50][:TINY_PAIRS]
    _write(out / "multi30k/train.en.gz", [en[i] for i in short])
    _write(out / "multi30k/train.fr.gz", [fr[i] for i in short])
    for split in ("val", "test_2016_flickr"):
        for lang in ("en", "fr"):
            _write(out / f"multi30k/{split}.{lang}.gz", read_lines(m30k / f"{split}.{lang}.gz")[:20])
    for i in range(1, 6):
        _write(out / f"multi30k/captions-en/train.{i}.en.gz", read_lines(m30k / f"captions-en/train.{i}.en.gz")[:100])
    tatoeba = read_lines(shared_data / "tatoeba/eng-fra.tsv.gz")[:4050:10]
    _write(out / "tatoeba/eng-fra.tsv.gz", tatoeba)
    return out


def tiny_config(out_dir: Path, data_dir: Path, **overrides: object) -> dict[str, object]:
    """TrainConfig values for a model that trains in seconds."""
    values: dict[str, object] = {
        "data_dir": str(data_dir),
        "out_dir": str(out_dir),
        "vocab_size": 400,
        "d_model": 64,
        "n_heads": 4,
        "d_ff": 256,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "dropout": 0.0,
        "label_smoothing": 0.0,
        "max_tokens": 600,
        "mlm_tokens": 200,
        "lr": 3e-3,
        "warmup_steps": 30,
        "max_steps": 40,
        "threads": 1,
        "compile_loss": False,
        "log_every": 5,
        "checkpoint_minutes": 60.0,
        "checkpoint_steps": 20,
        "average_last": 1,
        "seed": 7,
        "data": parse_data_config(tomllib.loads(TINY_DATA_TOML)),
    }
    values.update(overrides)
    return values


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained until it has memorised its 200 training pairs (about a minute on 2 cores)."""
    from model.train import train
    from model.train_config import TrainConfig

    out = tmp_path_factory.mktemp("memorise")
    cfg = TrainConfig(**tiny_config(out, tiny_data_dir, max_steps=1200, lr=5e-3, checkpoint_steps=600))  # type: ignore[arg-type]
    model_dir = train(cfg, tiny_data_dir)
    assert model_dir is not None
    return model_dir


@pytest.fixture(scope="session")
def sentences(tiny_data_dir: Path) -> list[str]:
    train = read_lines(tiny_data_dir / "multi30k/train.en.gz")[:12]
    val = read_lines(tiny_data_dir / "multi30k/val.en.gz")[:12]
    return train + val  # memorised and unseen inputs


def _export_tiny(
    model_dir: Path, data_dir: Path, sentences: list[str], out: Path, precision: str, calibrated: bool = False
) -> Path:
    from export.exporter import export_model

    english, french = read_lines(data_dir / "multi30k/train.en.gz"), read_lines(data_dir / "multi30k/train.fr.gz")
    # As `mtserve export --quantize int8` does: int8 weights rounded against training sentences'
    # activations, and with `calibrated` (--activation-scales calibrated) the activations' scales too.
    calibration = {"en": english[:40], "fr": french[:40]}
    export_model(
        model_dir, out, english + french, precision, sentences, calibration_text=calibration, constant_scales=calibrated
    )
    return out


@pytest.fixture(scope="session")
def exported(
    tiny_model_dir: Path, tiny_data_dir: Path, sentences: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _export_tiny(tiny_model_dir, tiny_data_dir, sentences, tmp_path_factory.mktemp("onnx"), "fp32")


@pytest.fixture(scope="session")
def exported_int8(
    tiny_model_dir: Path, tiny_data_dir: Path, sentences: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _export_tiny(tiny_model_dir, tiny_data_dir, sentences, tmp_path_factory.mktemp("onnx-int8"), "int8")


@pytest.fixture(scope="session")
def exported_int8_calibrated(
    tiny_model_dir: Path, tiny_data_dir: Path, sentences: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("onnx-int8-calibrated")
    return _export_tiny(tiny_model_dir, tiny_data_dir, sentences, out, "int8", calibrated=True)


@pytest.fixture(params=["c", "numpy"])
def common_step(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each of the search's two forms of its common step and of the cache's reorder: the C module's
    (it must be built: `make` builds it, with a C compiler), then numpy's."""
    from service.runtime import native

    if request.param == "numpy":
        monkeypatch.setattr(native, "common_step", None)
    else:
        assert native.common_step is not None, native.NOT_BUILT
    return str(request.param)
