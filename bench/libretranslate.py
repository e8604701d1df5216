"""LibreTranslate and mtserve over HTTP on the same weights, interleaved.

    python bench/libretranslate.py --work runs/lt-bench [--rounds 3] [--venv runs/lt-venv]

- LibreTranslate is installed from the registry into its own environment (`--venv`, made at the
  first run: `pip install libretranslate==LIBRETRANSLATE_VERSION`), a benchmark-only dependency.
- The model directory (`--model`, default the committed model) becomes the two Argos packages
  argos-train would make of it (bench/argos_package.py: CTranslate2 int8, OpenNMT-py names, the
  language tag as target_prefix), installed in a packages directory of the work directory that
  LibreTranslate reads through ARGOS_PACKAGES_DIR. mtserve serves the model directory itself.
- LibreTranslate's sentence splitter (MiniSBD) downloads its model at the first request. Where
  the machine has no network, and by default, it is replaced by a no-op that keeps each text one
  sentence (the benchmark sends one sentence per request); the output says so.
- Configurations: LibreTranslate at its defaults (ARGOS_INTER_THREADS=1, ARGOS_INTRA_THREADS=0,
  waitress --threads 4) and at other thread settings; mtserve at its defaults, at one thread, and
  as two processes (MTSERVE_PROCESSES=2), each held to a core of its own by default, the same
  two left to the kernel (MTSERVE_CPU_AFFINITY=off), and the same two with no batch waiting to
  fill (MTSERVE_MAX_WAIT_MS=0).
  Every configuration decodes at beam 4 (argostranslate's, mtserve's through
  MTSERVE_DEFAULT_BEAM_SIZE), and every request is LibreTranslate's POST /translate.
- Every configuration's server runs in its own process, all at once, each warmed up on ten
  sentences. The configurations then take turns, the order rotated from turn to turn, so that
  each sees the same load of a shared machine (one server after the other, seconds apart, each
  saw a different one): one client sends a block of `--block` (5) of the first `--sentences`
  test2016 sentences one after the other, each configuration in turn, then the next block; then
  `--clients` clients share a block of `--load-block` (160) of `--load-sentences` sentences,
  each configuration in turn. `--rounds` times over. The one client keeps one connection to each
  server; the clients have connections of their own.

Prints a JSON line per configuration and round (the one client's p50, the clients' sentences per
second over the round's blocks), then per configuration the medians over rounds, then the
issue's ratios against LibreTranslate's best configuration: of the medians, and for one client
the median of the per-sentence ratios (the same sentence, the same round, a fraction of a second
apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import test_pairs  # noqa: E402
from service.api.launcher import free_port, wait_ready  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR, load_manifest  # noqa: E402

LIBRETRANSLATE_VERSION = "1.9.6"
BEAM = 4  # argostranslate's ARGOS_BEAM_SIZE default

# LibreTranslate started with its sentence splitter replaced by a no-op (one sentence per text).
NO_OP_SPLITTER = """
import sys
import argostranslate.sbd as sbd
sbd.MiniSBDSentencizer.split_sentences = lambda self, text: [text]
from libretranslate.main import main
sys.argv[0] = "libretranslate"
main()
"""


@dataclass(frozen=True)
class Config:
    name: str
    engine: str  # "libretranslate" or "mtserve"
    env: dict[str, str]


CONFIGS = (
    Config("libretranslate-default", "libretranslate", {}),
    Config("libretranslate-intra1", "libretranslate", {"ARGOS_INTRA_THREADS": "1"}),
    Config("libretranslate-inter2-intra1", "libretranslate", {"ARGOS_INTER_THREADS": "2", "ARGOS_INTRA_THREADS": "1"}),
    Config("mtserve-default", "mtserve", {}),
    Config("mtserve-threads1", "mtserve", {"MTSERVE_THREADS": "1"}),
    Config("mtserve-processes2", "mtserve", {"MTSERVE_PROCESSES": "2"}),
    # the same processes left where the kernel puts them: what holding each to a core of its own gives
    Config("mtserve-processes2-unheld", "mtserve", {"MTSERVE_PROCESSES": "2", "MTSERVE_CPU_AFFINITY": "off"}),
    # the same processes, no batch waiting to fill: what waiting for the clients just answered gives
    Config("mtserve-processes2-nowait", "mtserve", {"MTSERVE_PROCESSES": "2", "MTSERVE_MAX_WAIT_MS": "0"}),
)


def ensure_libretranslate(venv: Path) -> Path:
    """The environment's `python`, LibreTranslate installed in it from the registry if missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('libretranslate'))"]
    installed = python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip()
    if installed == LIBRETRANSLATE_VERSION:
        return python
    print(f"installing libretranslate=={LIBRETRANSLATE_VERSION} into {venv} (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, f"libretranslate=={LIBRETRANSLATE_VERSION}"], check=True)
    return python


def install_packages(model_dir: Path, work: Path) -> Path:
    """The model's Argos packages, one per direction its manifest lists, in a packages directory, as
    argospm installs them."""
    from bench.argos_package import package_mtserve_model

    packages = work / "packages"
    if packages.exists():
        shutil.rmtree(packages)
    packages.mkdir(parents=True)
    build = work / "build"
    for source, target in load_manifest(model_dir, verify=False).model_languages().directions:
        folder = package_mtserve_model(model_dir, build, source, target)
        shutil.move(str(folder), packages / folder.name)
    return packages


def minisbd_reachable(python: Path, home: Path) -> bool:
    """Whether MiniSBD can fetch its English model here (it needs the network)."""
    code = "from minisbd import SBDetect; SBDetect('en').sentences('One. Two.')"
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    result = subprocess.run([str(python), "-c", code], capture_output=True, env=env, timeout=120)
    return result.returncode == 0


class Server:
    """One configuration's server in its own process."""

    def __init__(self, config: Config, python: Path, packages: Path, model_dir: Path, home: Path, real_sbd: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"{config.name}-{self.port}.log"
        if config.engine == "libretranslate":
            env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
                   "XDG_CONFIG_HOME": str(home / "config"), "ARGOS_PACKAGES_DIR": str(packages),
                   **config.env}  # fmt: skip
            languages = ",".join(load_manifest(model_dir, verify=False).languages)
            args = ["--host", "127.0.0.1", "--port", str(self.port), "--load-only", languages, "--disable-web-ui"]
            launch = [str(python.parent / "libretranslate")] if real_sbd else [str(python), "-c", NO_OP_SPLITTER]
            command = [*launch, *args]
            self.ready_path = "/languages"
        else:
            env = {**os.environ, "MTSERVE_HOST": "127.0.0.1", "MTSERVE_PORT": str(self.port),
                   "MTSERVE_MODEL_DIR": str(model_dir), "MTSERVE_DEFAULT_BEAM_SIZE": str(BEAM),
                   **config.env}  # fmt: skip
            command = [sys.executable, "-m", "service.cli", "serve"]
            self.ready_path = "/ready"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def __enter__(self) -> Server:
        try:
            wait_ready(self.url, self.process, 120, self.ready_path)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {self.log.read_text()[-2000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _send(
    client: aiohttp.ClientSession, sentences: list[str], clients: int, target: str
) -> tuple[list[float], float, list[str]]:
    """Each client sends its next sentence as soon as its last answer arrives; latencies, seconds, outputs."""
    latencies: list[float] = []
    outputs: dict[int, str] = {}
    queue = iter(enumerate(sentences))

    async def worker() -> None:
        for index, text in queue:
            started = time.perf_counter()
            body = {"q": text, "source": "en", "target": target, "format": "text"}
            async with client.post("/translate", json=body) as response:
                payload = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {payload}")
            latencies.append(time.perf_counter() - started)
            outputs[index] = payload["translatedText"]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, time.perf_counter() - started, [outputs[i] for i in range(len(sentences))]


@dataclass
class Measured:
    """One configuration's figures: per round, the one client's latencies (sentence order) and the
    clients' sentences and seconds; its one-client translations."""

    latencies: list[list[float]]
    load: list[tuple[int, float]]
    outputs: list[str]


def _blocks(items: list[str], size: int) -> list[tuple[int, list[str]]]:
    return [(start, items[start : start + size]) for start in range(0, len(items), size)]


async def measure_all(
    servers: dict[str, Server], one: list[str], many: list[str], args: argparse.Namespace, target: str
) -> dict[str, Measured]:
    """Every configuration in turns of one block, the order rotated from turn to turn."""
    names = list(servers)
    measured = {name: Measured([], [], [""] * len(one)) for name in names}
    async with contextlib.AsyncExitStack() as stack:
        # One client is one connection, kept alive. Its requests on the pool the 16 clients left open
        # would each take the connection idle longest (aiohttp's pool is first in, first out),
        # a client no program of one user is.
        sessions: dict[tuple[str, str], aiohttp.ClientSession] = {}
        for name, server in servers.items():
            for clients, kind in ((1, "one"), (args.clients, "many")):
                session = aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(limit=clients))
                sessions[name, kind] = await stack.enter_async_context(session)
        for name in names:  # warm-up: CTranslate2 loads its model at the first request
            await _send(sessions[name, "one"], one[:10], 1, target)
        turn = 0
        for _ in range(args.rounds):
            for m in measured.values():
                m.latencies.append([0.0] * len(one))
                m.load.append((0, 0.0))
            for start, block in _blocks(one, args.block):
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    latencies, _, outputs = await _send(sessions[name, "one"], block, 1, target)
                    measured[name].latencies[-1][start : start + len(block)] = latencies
                    measured[name].outputs[start : start + len(block)] = outputs
                turn += 1
            for _, block in _blocks(many, args.load_block):
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    _, seconds, _ = await _send(sessions[name, "many"], block, args.clients, target)
                    sentences, total = measured[name].load[-1]
                    measured[name].load[-1] = (sentences + len(block), total + seconds)
                turn += 1
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="packages and logs (default: a temporary directory)")
    parser.add_argument("--venv", type=Path, default=ROOT / "runs" / "lt-venv", help="LibreTranslate's environment")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=40, help="one client: the first N test2016 sentences")
    parser.add_argument("--block", type=int, default=5, help="one client: sentences per turn")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--load-sentences", type=int, default=480, help="sentences the clients share")
    parser.add_argument("--load-block", type=int, default=160, help="the clients: sentences per turn")
    parser.add_argument("--configs", nargs="+", choices=[c.name for c in CONFIGS], default=[c.name for c in CONFIGS])
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="mtserve-lt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir(exist_ok=True)
    python = ensure_libretranslate(args.venv)
    packages = install_packages(args.model, work)
    real_sbd = minisbd_reachable(python, home)
    splitter = "MiniSBD" if real_sbd else "no-op (MiniSBD could not fetch its model here: one sentence per text)"
    print(
        json.dumps({"libretranslate": LIBRETRANSLATE_VERSION, "beam": BEAM, "sentence_splitter": splitter}), flush=True
    )
    targets = load_manifest(args.model, verify=False).model_languages().targets("en")
    if not targets:
        parser.error(f"{args.model} translates nothing from English, the language of the test sentences")
    target = targets[0]
    sources, _ = test_pairs(args.data_dir)
    one, many = list(sources[: args.sentences]), list(sources[: args.load_sentences])
    configs = [c for c in CONFIGS if c.name in args.configs]
    with contextlib.ExitStack() as stack:
        servers = {
            c.name: stack.enter_context(Server(c, python, packages, args.model, home, real_sbd)) for c in configs
        }
        measured = asyncio.run(measure_all(servers, one, many, args, target))
    reference = next((measured[c.name].outputs for c in configs if c.engine == "libretranslate"), None)
    rows: list[dict[str, object]] = []
    for config in configs:
        m = measured[config.name]
        for round_index, (latencies, (sentences, seconds)) in enumerate(zip(m.latencies, m.load, strict=True)):
            row: dict[str, object] = {
                "round": round_index, "config": config.name,
                "one_client_p50_ms": round(statistics.median(latencies) * 1000, 2),
                "one_client_p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))] * 1000, 2),
                f"clients_{args.clients}_sent_per_s": round(sentences / seconds, 2),
            }  # fmt: skip
            if config.engine == "mtserve" and reference is not None and round_index == 0:
                same = sum(a == b for a, b in zip(m.outputs, reference, strict=True))
                row["same_text_as_libretranslate"] = f"{same}/{len(one)}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    summarize(rows, configs, args.clients, measured)


def summarize(
    rows: list[dict[str, object]], configs: list[Config], clients: int, measured: dict[str, Measured]
) -> None:
    load_key = f"clients_{clients}_sent_per_s"
    medians: dict[str, dict[str, float]] = {}
    for config in configs:
        mine = [r for r in rows if r["config"] == config.name]
        medians[config.name] = {
            "one_client_p50_ms": statistics.median(float(r["one_client_p50_ms"]) for r in mine),  # type: ignore[arg-type]
            load_key: statistics.median(float(r[load_key]) for r in mine),  # type: ignore[arg-type]
        }
        print(json.dumps({"summary": config.name, "rounds": len(mine), **medians[config.name]}), flush=True)
    lt = {n: m for n, m in medians.items() if n.startswith("libretranslate")}
    ours = {n: m for n, m in medians.items() if n.startswith("mtserve")}
    if not lt or not ours:
        return
    best_lt_p50 = min(lt.items(), key=lambda kv: kv[1]["one_client_p50_ms"])
    best_lt_load = max(lt.items(), key=lambda kv: kv[1][load_key])
    best_p50 = min(ours.items(), key=lambda kv: kv[1]["one_client_p50_ms"])
    best_load = max(ours.items(), key=lambda kv: kv[1][load_key])
    print(json.dumps({
        "one_client_p50": f"{best_p50[0]} {best_p50[1]['one_client_p50_ms']:.2f} ms against "
                          f"{best_lt_p50[0]} {best_lt_p50[1]['one_client_p50_ms']:.2f} ms",
        "one_client_ratio": round(best_p50[1]["one_client_p50_ms"] / best_lt_p50[1]["one_client_p50_ms"], 3),
        "one_client_median_paired_ratio": round(statistics.median(
            a / b for ra, rb in zip(measured[best_p50[0]].latencies, measured[best_lt_p50[0]].latencies, strict=True)
            for a, b in zip(ra, rb, strict=True)), 3),
        f"clients_{clients}": f"{best_load[0]} {best_load[1][load_key]:.1f}/s against "
                              f"{best_lt_load[0]} {best_lt_load[1][load_key]:.1f}/s",
        f"clients_{clients}_ratio": round(best_load[1][load_key] / best_lt_load[1][load_key], 3),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
