"""Models loaded on demand within a memory budget, on a real server: three tiny models with a budget
that fits two, a cold model asked for twenty times at once, a model corrupted after start."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.api.launcher import LiveServer, live_server, metric_value
from service.api.residency import LOAD_FACTOR
from service.manifest import MANIFEST_FILE, load_manifest
from service.runtime.translator import Translator

pytestmark = pytest.mark.slow
SENTENCE = "A man is playing a guitar."


def _one_direction(exported: Path, out: Path, source: str, target: str, label: str) -> Path:
    """A copy of the tiny model that declares one direction, its target named `label`."""
    shutil.copytree(exported, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    tag = manifest["special_ids"]["language_tags"][target]
    manifest |= {"languages": [source, label], "directions": [[source, label]], "decoder_start": {label: tag}}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def three(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A directory of three models (en→fr, fr→en, en→xx: the en→fr weights under another name) and
    what each direction translates SENTENCE or its French to, from the model loaded alone."""
    root = tmp_path_factory.mktemp("three")
    _one_direction(exported, root / "a", "en", "fr", "fr")
    _one_direction(exported, root / "b", "fr", "en", "en")
    _one_direction(exported, root / "c", "en", "fr", "xx")
    french = Translator.load(root / "a").translate([SENTENCE], "fr")[0][0].text
    expected = {
        "en-fr": french,
        "en-xx": french,
        "fr-en": Translator.load(root / "b").translate([french], "en")[0][0].text,
    }
    return root, expected


def _budget(root: Path, models: int) -> str:
    """Bytes for `models` of the three (their estimate: files times LOAD_FACTOR), and a little."""
    sizes = [sum((d / n).stat().st_size for n in load_manifest(d, verify=False).sha256) for d in sorted(root.iterdir())]
    return str(int(max(sizes) * LOAD_FACTOR * models * 1.05))


def _loads(server: LiveServer, name: str, metric: str = "mtserve_model_loads_total") -> float:
    text = httpx.get(server.url + "/metrics").text
    try:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(metric + "{") and f'model="{name}"' in line
        )  # fmt: skip
    except (IndexError, ValueError):
        return 0.0


def test_three_models_in_a_budget_for_two_translate_right_taking_turns(
    three: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = three
    env = {"MTSERVE_MODELS": str(root), "MTSERVE_MEMORY_BUDGET": _budget(root, 2), "MTSERVE_LOG_LEVEL": "info",
           "MTSERVE_PIVOT": "off"}  # fmt: skip
    with live_server(env=env, log_dir=tmp_path) as server:
        metrics = httpx.get(server.url + "/metrics").text
        assert metric_value(metrics, "mtserve_models_loaded") == 0  # nothing preloaded
        languages = {e["code"]: e["targets"] for e in httpx.get(server.url + "/languages").json()}
        assert languages["en"] == ["en", "fr", "xx"]  # every installed model routes, loaded or not
        for direction in ["en-fr", "fr-en", "en-xx"] * 3:
            source, target = direction.split("-")
            text = SENTENCE if source == "en" else expected["en-fr"]
            r = httpx.post(server.url + "/translate", json={"q": text, "source": source, "target": target}, timeout=60)
            assert r.status_code == 200 and r.json()["translatedText"] == expected[direction], (direction, r.text)
        for name in ("mtserve-en-fr", "mtserve-fr-en", "mtserve-en-xx"):
            assert _loads(server, name, "mtserve_model_unloads_total") >= 2, name
        assert metric_value(httpx.get(server.url + "/metrics").text, "mtserve_models_loaded") <= 2
        assert "unloaded (least recently used)" in server.log()
        assert _loads(server, "mtserve-en-fr", "mtserve_model_unpacked_graphs") == 0


def test_graphs_without_a_packed_copy_are_counted(three: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Where no packed copy can be made (the packed directory's path is a file), the model serves
    from its graphs as exported, and /metrics says how many of its graphs pack their own weights."""
    root, expected = three
    (tmp_path / "packed").write_text("not a directory")
    env = {"MTSERVE_MODEL_DIR": str(root / "a"), "MTSERVE_PACKED_DIR": str(tmp_path / "packed")}
    with live_server(env=env, log_dir=tmp_path) as server:
        r = httpx.post(server.url + "/translate", json={"q": SENTENCE, "source": "en", "target": "fr"}, timeout=60)
        assert r.status_code == 200 and r.json()["translatedText"] == expected["en-fr"], r.text
        graphs = {"encoder", "decoder", "mlm_head"} & set(load_manifest(root / "a", verify=False).files)
        assert _loads(server, "mtserve-en-fr", "mtserve_model_unpacked_graphs") == len(graphs)
        assert "cannot write packed weights" in server.log()


def test_a_model_in_use_is_never_unloaded(three: tuple[Path, dict[str, str]]) -> None:
    """The residency itself, with the real models: model a held (a request on it, in flight) while
    b and c take turns in a budget for two; then, with both loaded models held, a third waits for
    room and gives up at its deadline."""
    from service.api.metrics import Metrics
    from service.api.models import ModelSet, load_model, read_installed
    from service.api.residency import ModelUnavailable, Residency
    from service.api.scheduler import Scheduler

    root, expected = three
    entries = read_installed(sorted(root.iterdir()))
    metrics = Metrics()
    scheduler = Scheduler({}, metrics, batch_tokens=2048, queue_size=64, max_wait_s=0.0)
    residency = Residency(ModelSet(entries), lambda e: load_model(e, 1, 2048, False, None), scheduler,
                          metrics, budget=int(_budget(root, 2)))  # fmt: skip
    a, b, c = (e.name for e in entries)

    async def run() -> None:
        async with residency.use(a, time.monotonic() + 60) as held:
            for name in (b, c) * 3:
                async with residency.use(name, time.monotonic() + 60) as model:
                    text = expected["en-fr"] if name == b else SENTENCE
                    target = "en" if name == b else "xx"
                    out = await asyncio.to_thread(model.translator.translate, [text], target)
                    assert out[0][0].text == expected["fr-en" if name == b else "en-xx"]
                assert held.name in {m.name for m in residency.loaded()}
            unloads.update({name: metrics.unloads.labels(name)._value.get() for name in (a, b, c)})
            async with residency.use(b, time.monotonic() + 60):
                with pytest.raises(ModelUnavailable, match="still loading"):
                    async with residency.use(c, time.monotonic() + 1.0):
                        pass

    unloads: dict[str, float] = {}  # while a is held
    asyncio.run(run())
    assert unloads[a] == 0 and unloads[b] >= 2 and unloads[c] >= 2, unloads


def test_twenty_requests_for_a_cold_model_cause_one_load(three: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, expected = three
    env = {"MTSERVE_MODELS": str(root), "MTSERVE_MEMORY_BUDGET": _budget(root, 3), "MTSERVE_LOG_LEVEL": "warning",
           "MTSERVE_PRELOAD": "mtserve-fr-en"}  # fmt: skip
    with live_server(env=env, log_dir=tmp_path) as server:
        assert metric_value(httpx.get(server.url + "/metrics").text, "mtserve_models_loaded") == 1  # the preloaded

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = {"q": SENTENCE, "source": "en", "target": "xx"}
                return list(await asyncio.gather(*(client.post("/translate", json=body) for _ in range(20))))

        answers = asyncio.run(run())
        assert [r.status_code for r in answers] == [200] * 20
        assert {r.json()["translatedText"] for r in answers} == {expected["en-xx"]}
        assert _loads(server, "mtserve-en-xx") == 1
        assert _loads(server, "mtserve-en-xx", "mtserve_model_load_waits_total") >= 1


def test_a_model_corrupted_after_start_answers_503_and_the_others_serve(
    three: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = three
    models = tmp_path / "models"
    shutil.copytree(root, models)
    env = {"MTSERVE_MODELS": str(models), "MTSERVE_MEMORY_BUDGET": _budget(root, 3), "MTSERVE_LOG_LEVEL": "info"}
    with live_server(env=env, log_dir=tmp_path) as server:
        weights = models / "c" / "weights.bin"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        r = httpx.post(server.url + "/translate", json={"q": SENTENCE, "source": "en", "target": "xx"}, timeout=60)
        assert r.status_code == 503 and "mtserve-en-xx" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
        assert "weights.bin" in server.log()
        r = httpx.post(server.url + "/translate", json={"q": SENTENCE, "source": "en", "target": "fr"}, timeout=60)
        assert r.status_code == 200 and r.json()["translatedText"] == expected["en-fr"]


def test_a_model_larger_than_the_budget_stops_start_up_naming_it(three: tuple[Path, dict[str, str]]) -> None:
    import os
    import subprocess
    import sys

    root, _ = three
    env = {**os.environ, "MTSERVE_MODELS": str(root), "MTSERVE_MEMORY_BUDGET": "1KiB", "MTSERVE_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode != 0 and "over the whole memory budget" in done.stderr and "mtserve-" in done.stderr
    assert "Traceback" not in done.stderr
