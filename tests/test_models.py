"""Several models in one service: the committed model beside an imported Marian model."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.marian_models import Variant, build_marian_dir
from export.marian import import_marian
from model.corpus import read_lines
from service.api.launcher import LiveServer, live_server
from service.api.models import ModelSetError, check_model_dirs
from service.manifest import DEFAULT_MODEL_DIR

pytest.importorskip("transformers")


def _import(root: Path, shared_data: Path, source: str, target: str) -> Path:
    m30k = shared_data / "multi30k"
    src, tgt = read_lines(m30k / f"train.{source}.gz")[:300], read_lines(m30k / f"train.{target}.gz")[:300]
    variant = Variant(source_lang=source, target_lang=target, seed=5)
    hf_dir = build_marian_dir(root / f"opus-mt-{source}-{target}", src, tgt, variant)
    out = root / f"opus-mt-{source}-{target}-mtserve"
    import_marian(hf_dir, out)
    return out


@pytest.fixture(scope="module")
def en_de(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _import(tmp_path_factory.mktemp("en-de"), shared_data, "en", "de")


@pytest.fixture(scope="module")
def en_fr(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _import(tmp_path_factory.mktemp("en-fr"), shared_data, "en", "fr")


@pytest.fixture(scope="module")
def server(en_de: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"MTSERVE_MODELS": f"{DEFAULT_MODEL_DIR},{en_de}", "MTSERVE_WORKERS": "1", "MTSERVE_THREADS": "1"}
    with live_server(env, tmp_path_factory.mktemp("logs"), timeout=120) as live:
        yield live


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_each_direction_goes_to_the_model_that_serves_it(server: LiveServer) -> None:
    status, fr = _post(server.url + "/translate", {"q": "A man is playing a guitar.", "source": "en", "target": "fr"})
    assert status == 200 and "guitare" in fr["translatedText"]
    status, de = _post(server.url + "/translate", {"q": ["Two dogs run.", "A girl."], "source": "en", "target": "de"})
    assert status == 200 and len(de["translatedText"]) == 2 and all(de["translatedText"])
    status, back = _post(
        server.url + "/translate", {"q": "Un homme joue de la guitare.", "source": "fr", "target": "en"}
    )
    assert status == 200 and "guitar" in back["translatedText"]
    status, native = _post(server.url + "/v1/translate", {"texts": ["A dog."], "source": "en", "target": "de"})
    assert status == 200 and native["model"] == "mtserve-en-fr,opus-mt-en-de-mtserve"


def test_languages_are_the_union_with_pivots_and_an_unreachable_direction_is_a_400(server: LiveServer) -> None:
    languages = {entry["code"]: entry["targets"] for entry in json.loads(_get(server.url + "/languages"))}
    # fr→de through en (fr→en, then en→de); nothing translates from de but itself
    assert languages == {"en": ["de", "en", "fr"], "fr": ["de", "en", "fr"], "de": ["de"]}
    status, body = _post(server.url + "/translate", {"q": "Bonjour.", "source": "de", "target": "fr"})
    assert status == 400 and "(fr)" in body["error"] and "(de)" in body["error"]


def test_fill_mask_on_a_language_only_an_import_serves_is_a_400(server: LiveServer) -> None:
    status, body = _post(server.url + "/v1/fill-mask", {"text": "Ein <mask> Hund.", "language": "de"})
    assert status == 400 and "masked-LM head" in body["error"] and "de" in body["error"]
    status, rows = _post(server.url + "/v1/fill-mask", {"text": "A man is <mask> a guitar.", "language": "en"})
    assert status == 200 and len(rows) == 5


def test_metrics_and_logs_name_each_model(server: LiveServer) -> None:
    metrics = _get(server.url + "/metrics")
    for name in ("mtserve-en-fr", "opus-mt-en-de-mtserve"):
        assert f'model="{name}"' in metrics
        assert f'mtserve_model_resident_bytes{{model="{name}"}}' in metrics
    assert server.log().count("MB resident") == 2


def test_two_models_claiming_a_direction_stop_start_up_unless_one_is_preferred(en_fr: Path) -> None:
    with pytest.raises(ModelSetError, match=r"en→fr is served by mtserve-en-fr .* and opus-mt-en-fr-mtserve"):
        check_model_dirs([DEFAULT_MODEL_DIR, en_fr])
    check_model_dirs([DEFAULT_MODEL_DIR, en_fr], prefer=["opus-mt-en-fr-mtserve"])
    env = {"MTSERVE_MODELS": f"{DEFAULT_MODEL_DIR},{en_fr}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, timeout=60)
    assert run.returncode == 2 and b"MTSERVE_PREFER" in run.stderr + run.stdout


def test_a_broken_model_directory_stops_start_up_naming_it(en_de: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in en_de.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "vocab.json").write_text("{}")
    env = {"MTSERVE_MODELS": f"{DEFAULT_MODEL_DIR},{broken}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, timeout=60)
    assert run.returncode == 2 and str(broken / "vocab.json").encode() in run.stderr + run.stdout
