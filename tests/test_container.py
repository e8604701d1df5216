"""The container, verified without a Docker engine.

The Dockerfile is linted (hadolint) and parsed (dockerfile-parse). Its COPY sources, filtered by
.dockerignore, and its pip install lines are replayed into a fresh virtual environment, from which
the service starts through the image's ENTRYPOINT and CMD and translates; the image's own
`mtserve import argos` turns a LibreTranslate package into a model the image then serves. The compose file, the
Kubernetes manifests, the Prometheus config and the Grafana dashboard are validated, and every
metric the dashboard queries exists on a live /metrics.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from fastapi.testclient import TestClient

from bench.argos_package import package_mtserve_model, zip_package
from service.api.app import create_app
from service.api.launcher import free_port, wait_ready
from service.api.settings import Settings
from service.manifest import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S_VERSION = "1.31.0"


def _dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser


def _final_stage(instructions: list[dict[str, str]]) -> list[dict[str, str]]:
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_final_stage_is_non_root_checked_and_torch_free() -> None:
    instructions = _dockerfile().structure
    assert sum(ins["instruction"] == "FROM" for ins in instructions) >= 2, "multi-stage"
    final = _final_stage(instructions)
    users = [ins["value"].split(":")[0] for ins in final if ins["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(ins["instruction"] == "HEALTHCHECK" and "/health" in ins["value"] for ins in final)
    assert any(ins["instruction"] == "EXPOSE" and "8000" in ins["value"] for ins in final)
    entrypoint = [ins["value"] for ins in final if ins["instruction"] == "ENTRYPOINT"]
    assert entrypoint and "dumb-init" in entrypoint[-1]
    runs = " ".join(ins["value"] for ins in instructions if ins["instruction"] == "RUN")
    assert "torch" not in runs
    final_runs = " ".join(ins["value"] for ins in final if ins["instruction"] == "RUN")
    assert "gcc" not in final_runs and "build-essential" not in final_runs, "a compiler in the build stage only"
    lock = (ROOT / "requirements" / "runtime.lock").read_text().lower()
    assert not re.search(r"^(torch|nvidia)", lock, re.M)


def _context_files() -> list[Path]:
    """Files of the build context: what .dockerignore lets through, by Docker's own matching rules
    (the Docker SDK's implementation)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    kept = exclude_paths(str(ROOT), [p for p in patterns if p and not p.startswith("#")])
    return sorted(ROOT / p for p in kept if (ROOT / p).is_file())


def _replay_copies(instructions: list[dict[str, str]], context: list[Path], root: Path) -> None:
    """Every COPY from the context (not --from a stage), onto a directory standing for the image's /."""
    for ins in instructions:
        if ins["instruction"] != "COPY" or "--from" in ins["value"]:
            continue
        *sources, dest = shlex.split(ins["value"])
        for source in sources:
            matched = [f for f in context if f.relative_to(ROOT).as_posix() == source
                       or f.relative_to(ROOT).as_posix().startswith(source.rstrip("/") + "/")]  # fmt: skip
            assert matched, f"COPY {source}: nothing in the build context"
            for file in matched:
                rel = file.relative_to(ROOT / source) if (ROOT / source).is_dir() else Path(file.name)
                target = (
                    root / dest.lstrip("/") / rel
                    if dest.endswith("/") or (ROOT / source).is_dir()
                    else root / dest.lstrip("/")
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)


@pytest.mark.slow
def test_the_image_file_set_and_dependency_set_serve_a_translation(tmp_path: Path) -> None:
    instructions = _dockerfile().structure
    root = tmp_path / "image"
    _replay_copies(instructions, _context_files(), root)
    assert not (root / "app/artifacts/default/model.pt").exists(), ".dockerignore keeps the checkpoint out"
    prefix = str(root)
    # The RUN lines that build the virtual environment, with the image's paths moved under `root`.
    for ins in instructions:
        if ins["instruction"] != "RUN":
            continue
        command = ins["value"]
        if "python -m venv /opt/venv" in command:
            venv.create(root / "opt/venv", with_pip=True)
        elif "/opt/venv/bin/pip install" in command:
            moved = re.sub(r"(?<![\w.])/(opt|src|app)/", prefix + r"/\1/", command + " ").strip()
            moved = re.sub(r"(?<![\w.])/src\b", prefix + "/src", moved)
            result = subprocess.run(moved, shell=True, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stderr[-3000:]
    python = root / "opt/venv/bin/python"
    built = subprocess.run(
        [python, "-c", "import service.runtime._common_step, service.runtime._denormals"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, "the image's install builds the runtime's C modules: " + built.stderr[-2000:]
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0, "torch must not be installed in the image"

    final = _final_stage(instructions)
    env_line = " ".join(ins["value"] for ins in final if ins["instruction"] == "ENV")
    assert "MTSERVE_MODEL_DIR=/app/artifacts/default" in env_line
    # The packed copies' directory (docs/DEPLOY.md) exists in the image and belongs to its user.
    packed = re.search(r"MTSERVE_PACKED_DIR=(\S+)", env_line)
    assert packed, env_line
    user = [i["value"] for i in final if i["instruction"] == "USER"][-1]
    made = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert f"mkdir -p {packed.group(1)}" in made and f"chown -R {user} " in made, made
    entrypoint = json.loads([i["value"] for i in final if i["instruction"] == "ENTRYPOINT"][-1])
    cmd = json.loads([i["value"] for i in final if i["instruction"] == "CMD"][-1])
    port = free_port()
    env = {
        "PATH": f"{root}/opt/venv/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MTSERVE_MODEL_DIR": str(root / "app/artifacts/default"),
        "MTSERVE_HOST": "127.0.0.1",
        "MTSERVE_PORT": str(port),
    }
    # A LibreTranslate user's package, imported by the image's own command (no torch there)...
    folder = package_mtserve_model(DEFAULT_MODEL_DIR, tmp_path / "package", "en", "fr")
    package = zip_package(folder, tmp_path / "translate-en_fr.argosmodel")
    models = tmp_path / "models"
    imported = subprocess.run(
        [root / "opt/venv/bin/mtserve", "import", "argos", package, "--out", models],
        env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert "no torch" in imported.stderr
    (model_dir,) = [p for p in models.iterdir() if (p / "manifest.json").is_file()]
    served = [("default model", env), ("imported package", {**env, "MTSERVE_MODEL_DIR": str(model_dir)})]
    for what, served_env in served:  # ...served like the default model
        process = subprocess.Popen(
            [*entrypoint, *cmd], env=served_env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process, timeout=90)
            r = httpx.post(url + "/translate", json={"q": "A man is playing a guitar.", "source": "en", "target": "fr"})
            assert r.status_code == 200 and "guitare" in r.json()["translatedText"], (what, r.text)
        finally:
            process.terminate()
            assert process.wait(timeout=40) == 0, what


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((DOCKER / "schema" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    jsonschema.validate(compose, schema)
    assert {"mtserve", "prometheus", "grafana"} <= set(compose["services"])
    for volume in compose["services"]["prometheus"]["volumes"] + compose["services"]["grafana"]["volumes"]:
        assert (DOCKER / volume.split(":")[0]).exists(), volume


def test_kubernetes_manifests_validate() -> None:
    kinds = set()
    for file in sorted((DOCKER / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(file.read_text()):
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
            kinds.add(document["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    deployment = yaml.safe_load((DOCKER / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"requests", "limits"} <= set(container["resources"])


def test_every_metric_the_dashboard_queries_exists() -> None:
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["mtserve:8000"]
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "mtserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bmtserve_\w+", e)}
    assert len(wanted) >= 8
    with TestClient(create_app(Settings())) as client:
        client.post("/translate", json={"q": "A dog runs.", "source": "en", "target": "fr"})
        exposed = client.get("/metrics").text
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", line.split("{")[0].split(" ")[0])
                for line in exposed.splitlines() if line.startswith("mtserve_")}  # fmt: skip
    missing = {m for m in wanted if re.sub(r"_total$", "", m) not in families}
    assert not missing, f"the dashboard queries metrics /metrics lacks: {sorted(missing)}"
