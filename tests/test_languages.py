"""A user's own corpora and languages: a tiny en/fr/de model trained from a config that mixes an
aligned-file corpus and a TSV corpus, exported and served, with exactly its trained directions."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.corpus import read_lines
from model.train_config import load_config
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
PAIRS = 150

CONFIG = """
out_dir = "{out}"
data_dir = "{data}"
vocab_size = 600
d_model = 64
n_heads = 4
d_ff = 256
encoder_layers = 2
decoder_layers = 2
dropout = 0.0
label_smoothing = 0.0
max_tokens = 800
mlm_tokens = 200
lr = 5e-3
warmup_steps = 30
max_steps = 500
threads = 1
compile_loss = false
log_every = 50
checkpoint_steps = 250
average_last = 1
seed = 3

languages = ["en", "fr", "de"]
validation = "val-de"

[[corpora]]
name = "captions-fr"
source = "en.txt.gz"
target = "fr.txt"
langs = ["en", "fr"]

[[corpora]]
name = "captions-de"
tsv = "en-de.tsv"
langs = ["en", "de"]
weight = 1.5

[[heldout]]
name = "val-de"
source = "val.en.gz"
target = "val.de.gz"
langs = ["en", "de"]
"""


def _write(path: Path, lines: list[str], gz: bool) -> None:
    text = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text) if gz else text)


@pytest.fixture(scope="module")
def trilingual(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model directory; its data are short Multi30k captions in three languages."""
    data = tmp_path_factory.mktemp("trilingual-data")
    m30k = shared_data / "multi30k"
    en, fr, de = (read_lines(m30k / f"train.{lang}.gz") for lang in ("en", "fr", "de"))
    short = [i for i in range(len(en)) if len(en[i]) < 40 and len(fr[i]) < 45 and len(de[i]) < 45][: 2 * PAIRS]
    _write(data / "en.txt.gz", [en[i] for i in short[:PAIRS]], gz=True)
    _write(data / "fr.txt", [fr[i] for i in short[:PAIRS]], gz=False)
    _write(data / "en-de.tsv", [f"{en[i]}\t{de[i]}" for i in short[PAIRS:]], gz=False)
    for lang in ("en", "de"):
        _write(data / f"val.{lang}.gz", read_lines(m30k / f"val.{lang}.gz")[:20], gz=True)
    out = tmp_path_factory.mktemp("trilingual")
    config = out / "config.toml"
    config.write_text(CONFIG.format(out=out / "run", data=data))
    from model.train import train

    model_dir = train(load_config(config, {}), data)
    assert model_dir is not None
    return model_dir


@pytest.fixture(scope="module")
def exported(trilingual: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.exporter import export_model

    out = tmp_path_factory.mktemp("trilingual-onnx")
    data_dir = Path(json.loads((trilingual / "train_config.json").read_text())["data_dir"])
    text = read_lines(data_dir / "en.txt.gz") + read_lines(data_dir / "fr.txt")
    text += [s for line in read_lines(data_dir / "en-de.tsv") for s in line.split("\t")]
    export_model(trilingual, out, text, "fp32", read_lines(data_dir / "en.txt.gz")[:20])
    return out


@pytest.fixture(scope="module")
def client(exported: Path) -> Iterator[TestClient]:
    """Pivoting off: exactly the trained directions."""
    from service.api.app import create_app
    from service.api.settings import Settings

    with TestClient(create_app(Settings(model_dir=exported, pivot="off"))) as c:
        yield c


@pytest.fixture(scope="module")
def pivoting(exported: Path) -> Iterator[TestClient]:
    """The default: fr↔de through English."""
    from service.api.app import create_app
    from service.api.settings import Settings

    with TestClient(create_app(Settings(model_dir=exported))) as c:
        yield c


def test_the_model_records_its_languages_and_trained_directions(trilingual: Path, exported: Path) -> None:
    config = json.loads((trilingual / "config.json").read_text())
    assert config["languages"] == ["en", "fr", "de"]
    assert config["directions"] == [["en", "fr"], ["fr", "en"], ["en", "de"], ["de", "en"]]
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["languages"] == ["en", "fr", "de"]
    assert manifest["special_ids"]["language_tags"] == {"en": 7, "fr": 8, "de": 9}
    assert manifest["directions"] == config["directions"]


def test_languages_lists_the_three_with_their_trained_targets(client: TestClient) -> None:
    body = client.get("/languages").json()
    assert body == [
        {"code": "en", "name": "English", "targets": ["de", "en", "fr"]},
        {"code": "fr", "name": "French", "targets": ["en", "fr"]},
        {"code": "de", "name": "German", "targets": ["de", "en"]},
    ]


def _lt(client: TestClient, texts: list[str], source: str, target: str, **extra: object) -> list[str]:
    r = client.post("/translate", json={"q": texts, "source": source, "target": target, **extra})
    assert r.status_code == 200, r.text
    return list(r.json()["translatedText"])


def test_pivoting_translates_de_to_fr_through_english_as_two_requests_by_hand(
    pivoting: TestClient, trilingual: Path
) -> None:
    assert {entry["code"]: entry["targets"] for entry in pivoting.get("/languages").json()} == {
        "en": ["de", "en", "fr"],
        "fr": ["de", "en", "fr"],
        "de": ["de", "en", "fr"],
    }
    data_dir = Path(json.loads((trilingual / "train_config.json").read_text())["data_dir"])
    german = [line.split("\t")[1] for line in read_lines(data_dir / "en-de.tsv")[:12]]
    english = _lt(pivoting, german, "de", "en")
    assert _lt(pivoting, german, "de", "fr") == _lt(pivoting, english, "en", "fr")
    r = pivoting.post(
        "/v1/translate", json={"texts": german[:3], "source": "de", "target": "fr", "num_hypotheses": 2, "beam_size": 4}
    )
    assert r.status_code == 200, r.text
    by_hand = pivoting.post(
        "/v1/translate",
        json={"texts": english[:3], "source": "en", "target": "fr", "num_hypotheses": 2, "beam_size": 4},
    ).json()
    for pivoted, direct in zip(r.json()["translations"], by_hand["translations"], strict=True):
        assert pivoted["text"] == direct["text"]  # alternatives: the last leg's n-best of the first leg's best
        assert [a["text"] for a in pivoted["alternatives"]] == [a["text"] for a in direct["alternatives"]]
    assert _lt(pivoting, ["Ein Hund."], "de", "de") == ["Ein Hund."]  # each language is its own target
    metrics = pivoting.get("/metrics").text
    assert 'mtserve_pivot_texts_total{route="de-en-fr"}' in metrics


def test_markup_urls_and_glossary_terms_survive_both_legs(pivoting: TestClient) -> None:
    html = "<p>Ein <b>Hund</b> läuft auf der Wiese: https://example.com/hund?x=1</p>"
    (out,) = _lt(pivoting, [html], "de", "fr", format="html")
    assert out.startswith("<p>") and out.endswith("</p>") and out.count("<b>") == out.count("</b>") == 1
    assert "https://example.com/hund?x=1" in out
    glossary = [{"source": "Hund", "target": "Toutou"}]
    r = pivoting.post("/v1/translate", json={"texts": ["Ein Hund läuft."], "source": "de", "target": "fr",
                                             "glossary": glossary})  # fmt: skip
    assert r.status_code == 200 and "Toutou" in r.json()["translations"][0]["text"], r.text


def test_trained_directions_translate(client: TestClient, trilingual: Path) -> None:
    """Memorised training pairs come back in the language asked for, from one model."""
    data_dir = Path(json.loads((trilingual / "train_config.json").read_text())["data_dir"])
    german = sorted((line.split("\t") for line in read_lines(data_dir / "en-de.tsv")), key=lambda p: len(p[0]))[:8]
    r = client.post("/translate", json={"q": [en for en, _ in german], "source": "en", "target": "de"})
    assert r.status_code == 200, r.text
    exact = [out for out, (_, de) in zip(r.json()["translatedText"], german, strict=True) if out == de]
    assert len(exact) >= 4, list(zip(r.json()["translatedText"], german, strict=True))
    french = list(zip(read_lines(data_dir / "en.txt.gz"), read_lines(data_dir / "fr.txt"), strict=True))
    french = sorted(french, key=lambda p: len(p[1]))[:8]
    r = client.post("/v1/translate", json={"texts": [fr for _, fr in french], "source": "fr", "target": "en"})
    assert r.status_code == 200, r.text
    exact = [t["text"] for t, (en, _) in zip(r.json()["translations"], french, strict=True) if t["text"] == en]
    assert len(exact) >= 4


def test_with_pivoting_off_an_untrained_direction_is_a_400_naming_it_on_every_route(
    client: TestClient, exported: Path
) -> None:
    r = client.post("/translate", json={"q": "Un chien court.", "source": "fr", "target": "de"})
    assert r.status_code == 400
    assert r.json() == {"error": "German (de) is not available as a target language from French (fr)"}
    r = client.post("/v1/translate", json={"texts": ["Un chien court."], "source": "fr", "target": "de"})
    assert r.status_code == 400 and "fr→de is not a direction of this model" in r.json()["error"]
    files = {"file": ("a.txt", b"Un chien court.", "text/plain")}
    r = client.post("/translate_file", data={"source": "fr", "target": "de"}, files=files)
    assert r.status_code == 400 and "German (de) is not available" in r.json()["error"]
    r = client.post("/translate", json={"q": "Ein Hund.", "source": "de", "target": "cs"})
    assert r.status_code == 400 and r.json() == {"error": "cs is not supported"}
    r = client.post("/v1/translate", json={"texts": ["Ein Hund."], "source": "de", "target": "cs"})
    assert r.status_code == 422 and r.json()["error"].startswith("target: 'cs' is not a language of this model")
    cli = [
        sys.executable,
        "-m",
        "service.cli",
        "translate",
        "--model",
        str(exported),
        "--source",
        "fr",
        "--target",
        "de",
    ]
    result = subprocess.run(cli, input="Un chien court.\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0 and "fr→de is not a direction of this model" in result.stderr


def test_detection_covers_the_models_languages(client: TestClient) -> None:
    r = client.post("/detect", json={"q": "Ein Hund läuft über die grüne Wiese und die Kinder spielen."})
    assert r.status_code == 200 and r.json()[0]["language"] == "de"
    assert {d["language"] for d in r.json()} == {"en", "fr", "de"}
