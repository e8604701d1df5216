"""A real server under overload, SIGTERM during load, and broken model files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.api.launcher import free_port, live_server, metric_value, rss_mb, until_each_taken
from service.manifest import DEFAULT_MODEL_DIR

SENTENCE = "A man in a blue shirt is standing on a ladder and cleaning a window."


ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _record(name: str, figures: dict[str, object]) -> None:
    """Figures for docs/RELIABILITY.md, kept beside the other test artifacts."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2))


def test_overload_gets_503_with_retry_after_and_health_answers(tmp_path: Path) -> None:
    env = {"MTSERVE_QUEUE_SIZE": "32", "MTSERVE_LOG_LEVEL": "warning", "MTSERVE_REQUEST_TIMEOUT_S": "120"}
    with live_server(env=env, log_dir=tmp_path) as server:
        baseline = rss_mb(server.process.pid)

        async def run() -> tuple[list[httpx.Response], list[int], float]:
            limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
            async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
                stop = asyncio.Event()
                health: list[int] = []
                peak = [baseline]

                async def watch() -> None:
                    async with httpx.AsyncClient(base_url=server.url, timeout=10) as probe:
                        while not stop.is_set():
                            health.append((await probe.get("/health")).status_code)
                            peak[0] = max(peak[0], rss_mb(server.process.pid))
                            await asyncio.sleep(0.1)

                watcher = asyncio.ensure_future(watch())
                body = {"q": SENTENCE, "source": "en", "target": "fr"}
                responses = await asyncio.gather(*(client.post("/translate", json=body) for _ in range(300)))
                stop.set()
                await watcher
                return list(responses), health, peak[0]

        responses, health, peak = asyncio.run(run())
        codes = [r.status_code for r in responses]
        accepted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 503]
        assert len(accepted) + len(refused) == 300, sorted(set(codes))
        assert len(accepted) >= 32 and refused  # the queue's 32, plus any batch that left it during the burst
        assert len({r.json()["translatedText"] for r in accepted}) == 1
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert health and set(health) == {200}
        assert peak < baseline + 500, f"RSS grew from {baseline:.0f} MB to {peak:.0f} MB"
        figures = {"requests": 300, "queue_size": 32, "accepted": len(accepted), "refused_503": len(refused)}
        _record("overload", {**figures, "health_checks": len(health), "rss_start_mb": round(baseline),
                             "rss_peak_mb": round(peak)})  # fmt: skip


def test_sigterm_during_load_finishes_accepted_work_and_exits_0(tmp_path: Path) -> None:
    env = {"MTSERVE_LOG_LEVEL": "info"}  # the default drain period, 25 s
    with live_server(env=env, log_dir=tmp_path) as server:

        async def run() -> tuple[list[httpx.Response], float]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
                body = {"q": [SENTENCE] * 8, "source": "en", "target": "fr"}
                tasks = [asyncio.ensure_future(client.post("/translate", json=body)) for _ in range(24)]
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as probe:

                    async def metrics() -> str:
                        return (await probe.get("/metrics")).text

                    await until_each_taken(metrics, tasks)
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                responses = await asyncio.gather(*tasks)
                return list(responses), signalled

        responses, signalled = asyncio.run(run())
        code = server.process.wait(timeout=60)
        exited = time.monotonic() - signalled
        assert [r.status_code for r in responses] == [200] * 24
        assert all(len(r.json()["translatedText"]) == 8 for r in responses)
        assert code == 0 and exited < 25
        assert "draining" in server.log()
        _record("drain", {"requests_in_flight_at_sigterm": 24, "completed_200": 24, "exit_code": code,
                          "seconds_from_sigterm_to_exit": round(exited, 2)})  # fmt: skip


def _start_and_fail(model_dir: Path) -> tuple[int, str]:
    env = {**os.environ, "MTSERVE_MODEL_DIR": str(model_dir), "MTSERVE_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_broken_model_file_stops_start_up_naming_the_file(tmp_path: Path, damage: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    target = model / ("decoder_step.onnx" if damage == "missing" else "weights.bin")
    if damage == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    code, output = _start_and_fail(model)
    assert code != 0
    assert target.name in output and ("missing" in output or "sha256" in output)
    assert "Traceback" not in output


def test_a_client_that_disconnects_frees_its_work(tmp_path: Path) -> None:
    with live_server(env={"MTSERVE_LOG_LEVEL": "warning"}, log_dir=tmp_path) as server:
        texts = [" ".join([SENTENCE] * 30)] * 64  # 1,920 sentences: many batches of work
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/translate", json={"q": texts, "source": "en", "target": "fr"}, timeout=1.0)
        time.sleep(3)  # long enough for the server to notice and for a batch in flight to end
        metrics = httpx.get(server.url + "/metrics").text
        done = metric_value(metrics, "mtserve_batch_sentences_sum")
        assert done < 1920 / 2, f"{done:.0f} of 1,920 sentences translated for a client that had left"
        assert metric_value(metrics, "mtserve_queue_depth") == 0


@contextmanager
def _files_dir_that_fails(base: Path) -> Iterator[tuple[Path, int, Callable[[], None]]]:
    """A files directory whose writes fail, the status expected, and how to make room again: a
    2 MiB tmpfs filled but for one page where the machine allows mounting one (507, no space),
    else a directory this user cannot write (503)."""
    directory = base / "files"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)],
                             capture_output=True).returncode == 0  # fmt: skip
    try:
        if mounted:
            filler = directory / "filler"
            with filler.open("wb") as handle:
                handle.write(b"\0" * ((2 << 20) - 4096))
            yield directory, 507, lambda: filler.unlink()
        elif os.geteuid() != 0:
            directory.chmod(0o500)
            yield directory, 503, lambda: directory.chmod(0o700)
        else:  # root without mount: a files directory below a plain file cannot exist
            (base / "plain").write_text("")
            yield base / "plain" / "files", 503, lambda: pytest.skip("no way to make room in this set-up")
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=False)


def test_a_full_files_directory_answers_5xx_naming_it_and_text_goes_on(tmp_path: Path) -> None:
    text = "\n".join(f"Sentence number {i}: a man in a blue shirt is standing on a ladder." for i in range(60))
    upload = {"file": ("notes.txt", text.encode())}
    with _files_dir_that_fails(tmp_path) as (directory, status, make_room):
        env = {"MTSERVE_LOG_LEVEL": "warning", "MTSERVE_FILES_DIR": str(directory)}
        with live_server(env=env, log_dir=tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            before = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            r = http.post("/translate_file", data={"source": "en", "target": "fr"}, files=upload)
            assert r.status_code == status, r.text
            assert str(directory) in r.json()["error"] and "MTSERVE_FILES_DIR" in r.json()["error"]
            assert status == 507 or int(r.headers["retry-after"]) >= 1
            after = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            assert after == before, f"left behind: {set(after) - set(before)}"
            files = http.get("/health").json()["files"]
            assert http.get("/health").status_code == 200 and files["state"] in ("full", "unwritable", "missing")
            assert files["directory"] == str(directory)
            ok = http.post("/translate", json={"q": SENTENCE, "source": "en", "target": "fr"})
            assert ok.status_code == 200 and "homme" in ok.json()["translatedText"]
            make_room()
            r = http.post("/translate_file", data={"source": "en", "target": "fr"}, files=upload)
            assert r.status_code == 200, r.text
            translated = http.get(r.json()["translatedFileUrl"].replace("http://testserver", server.url))
            assert translated.status_code == 200 and translated.text.count("\n") == 59
            assert http.get("/health").json()["files"]["state"] == "ok"
