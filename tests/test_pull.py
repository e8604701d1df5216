"""`mtserve pull` against a local HTTP server: an Argos package index with its packages (ranges
served, the first transfer cut to test resuming), and a Hugging Face Hub's file API."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.argos_package import package_mtserve_model, zip_package
from export.pull import PullError, select
from service.manifest import DEFAULT_MODEL_DIR, load_manifest

pytest.importorskip("ctranslate2")
pytestmark = pytest.mark.slow


@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> extra headers
    cut_once: set[str] = field(default_factory=set)  # paths whose next transfer stops halfway
    ranges: list[tuple[str, int]] = field(default_factory=list)  # (path, first byte) of each range request
    json_routes: dict[str, object] = field(default_factory=dict)  # path (query ignored) -> JSON body


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, head_only: bool) -> None:
            path = self.path.split("?")[0]
            if path in served.json_routes:
                body = json.dumps(served.json_routes[path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head_only:
                    self.wfile.write(body)
                return
            if path not in served.files:
                self.send_error(404)
                return
            body, start = served.files[path], 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0])
                served.ranges.append((path, start))
            if start >= len(body) and start:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            for key, value in served.headers.get(path, {}).items():
                self.send_header(key, value)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if head_only:
                return
            if path in served.cut_once and not head_only:
                served.cut_once.discard(path)
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def do_GET(self) -> None:
            self._send(head_only=False)

        def do_HEAD(self) -> None:
            self._send(head_only=True)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("pull-packages")
    out = {}
    for source, target in (("en", "fr"), ("fr", "en")):
        folder = package_mtserve_model(DEFAULT_MODEL_DIR, work / f"{source}_{target}", source, target)
        out[f"{source}-{target}"] = zip_package(folder, work / f"{folder.name}.argosmodel").read_bytes()
    return out


def _entry(url: str, source: str, target: str, version: str) -> dict[str, object]:
    names = {"en": "English", "fr": "French", "de": "German"}
    return {"package_version": version, "argos_version": "1.9.0", "from_code": source, "from_name": names[source],
            "to_code": target, "to_name": names[target], "code": f"translate-{source}_{target}",
            "links": [f"{url}/packages/{source}-{target}-{version}.argosmodel"]}  # fmt: skip


def _pull(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARGOS_PACKAGE_INDEX"}
    return subprocess.run([sys.executable, "-m", "service.cli", "pull", *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_pull_argos_chooses_as_load_only_resumes_and_imports(
    server: tuple[str, Served], archives: dict[str, bytes], tmp_path: Path
) -> None:
    url, served = server
    index = [_entry(url, "en", "fr", "1.9"), _entry(url, "en", "fr", "1.0"), _entry(url, "fr", "en", "1.9"),
             _entry(url, "en", "de", "1.9")]  # fmt: skip
    served.json_routes["/index.json"] = index
    for direction in ("en-fr", "fr-en"):
        served.files[f"/packages/{direction}-1.9.argosmodel"] = archives[direction]
    served.cut_once.add("/packages/en-fr-1.9.argosmodel")
    out = tmp_path / "models"
    first = _pull("argos", "en", "fr", "--out", str(out), "--index", f"{url}/index.json")
    assert first.returncode != 0 and "run the command again to resume" in first.stderr, first.stderr
    assert "Traceback" not in first.stderr
    assert not (out / "translate-en_fr").exists(), "a partial download became a model"
    assert list((out / ".downloads").glob("*.partial"))
    second = _pull("argos", "en", "fr", "--out", str(out), "--index", f"{url}/index.json")
    assert second.returncode == 0, second.stderr
    assert [path for path, start in served.ranges if start > 0] == ["/packages/en-fr-1.9.argosmodel"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["translate-en_fr", "translate-fr_en"]
    assert load_manifest(out / "translate-en_fr").origin == "argos"
    assert not list((out / ".downloads").iterdir()), "imported archives are removed"
    assert all("/en-de" not in path for path in [p for p, _ in served.ranges])


def test_pull_argos_names_what_it_cannot_do(server: tuple[str, Served], tmp_path: Path) -> None:
    url, served = server
    served.json_routes["/index.json"] = [_entry(url, "en", "fr", "1.9")]
    served.files["/packages/en-fr-1.9.argosmodel"] = b"not a zip file"
    done = _pull("argos", "en", "xx", "--out", str(tmp_path / "a"), "--index", f"{url}/index.json")
    assert done.returncode != 0 and "Unavailable language codes: xx" in done.stderr
    done = _pull("argos", "en", "fr", "--out", str(tmp_path / "b"), "--index", f"{url}/index.json")
    assert done.returncode != 0 and "not a package archive" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "b" / ".downloads").iterdir())


def test_selection_maps_libretranslate_codes_and_keeps_the_newest() -> None:
    index = [{"from_code": "en", "to_code": "zt", "package_version": "1.9"},
             {"from_code": "en", "to_code": "zt", "package_version": "1.10"},
             {"from_code": "zt", "to_code": "en", "package_version": "1.0"},
             {"from_code": "en", "to_code": "de", "package_version": "1.0"}]  # fmt: skip
    chosen = select(index, ["EN", "zh-Hant"])
    assert [(e["from_code"], e["to_code"], e["package_version"]) for e in chosen] == [
        ("en", "zt", "1.10"),
        ("zt", "en", "1.0"),
    ]
    with pytest.raises(PullError, match="Unavailable language codes: ko"):
        select(index, ["en", "ko"])


def test_pull_hf_downloads_through_huggingface_hub_and_imports(
    server: tuple[str, Served], tiny_data_dir: Path, tmp_path: Path
) -> None:
    from bench.marian_models import Variant, build_marian_dir
    from model.corpus import read_lines

    en = read_lines(tiny_data_dir / "multi30k/train.en.gz")
    fr = read_lines(tiny_data_dir / "multi30k/train.fr.gz")
    repo_dir = build_marian_dir(tmp_path / "opus-mt-en-fr", en, fr, Variant())
    url, served = server
    repo, sha = "Helsinki-NLP/opus-mt-en-fr", "0123456789abcdef0123456789abcdef01234567"
    files = {p.name: p.read_bytes() for p in repo_dir.iterdir() if p.is_file()}
    served.json_routes[f"/api/models/{repo}/revision/main"] = {
        "id": repo, "sha": sha, "siblings": [{"rfilename": name} for name in files]
    }  # fmt: skip
    served.json_routes[f"/api/models/{repo}/tree/{sha}"] = [
        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        for name, data in files.items()
    ]
    for name, data in files.items():
        path = f"/{repo}/resolve/{sha}/{name}"
        served.files[path] = data
        served.headers[path] = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "models"
    pairs = f"en-fr={tiny_data_dir / 'multi30k/train.en.gz'},{tiny_data_dir / 'multi30k/train.fr.gz'}"
    done = subprocess.run([sys.executable, "-m", "service.cli", "pull", "hf", repo, "--out", str(out),
                           "--shortlist", "64", "--shortlist-pairs", pairs], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = load_manifest(out / "opus-mt-en-fr")
    assert manifest.origin == "marian" and manifest.directions == [("en", "fr")]
    assert manifest.files["output_layer"] == "output_layer.npz"  # --shortlist, from the pairs given
    assert "shortlist of 64 tokens a sentence, from " in done.stdout and "pairs into fr" in done.stdout
