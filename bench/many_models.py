"""Forty models of the Argos shape served by one process within a memory budget, against all forty
loaded, and against CTranslate2 holding the same forty (what one LibreTranslate worker grows to).

    python bench/many_models.py --work runs/many-models [--models 40] [--budget 3GiB] [--seconds 120]

The models are one int8 Argos-shape import (bench/argos_engines.py: random weights, CTranslate2's
int8 as argos-train ships it, imported with `--quantize int8`) copied forty times, each copy its
own files (one byte of its weights changed: its own packed copies) and its own direction en→x00
… en→x39. 16 HTTP clients send one test2016 sentence per request, the direction drawn from a
Zipf distribution (exponent 1.1, seeded) over the forty. The server's proportional set size is
sampled every 0.2 s. Reported: requests/s, the peak and final
PSS, loads and unloads, and each load's time from the server's log (a cold model's load).
`--no-budget` serves all forty loaded from the start instead; `--ctranslate2` loads the forty
CTranslate2 directories in one process and reports its PSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.argos_engines import prepare  # noqa: E402
from bench.common import test_pairs  # noqa: E402
from export.shared_weights import WEIGHTS_FILE  # noqa: E402
from service.api.launcher import live_server, metric_value  # noqa: E402
from service.manifest import MANIFEST_FILE, sha256_file  # noqa: E402

CLIENTS = 16
ZIPF_EXPONENT = 1.1
LOADED = re.compile(r"model (\S+) from .* loaded in ([0-9.]+) s")


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def copies(base: Path, out: Path, count: int) -> Path:
    """`count` model directories, each a copy of `base` serving en→x<i>."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target, folder = f"x{i:02d}", out / f"argos-en-x{i:02d}"
        if (folder / MANIFEST_FILE).is_file():
            continue
        shutil.copytree(base, folder)
        # Each copy's weights differ in one byte (the first weight, by at most one step), so that
        # each is a model of its own: its own packed copies, its own pages.
        weights = folder / WEIGHTS_FILE
        raw = bytearray(weights.read_bytes())
        raw[0] = i
        weights.write_bytes(bytes(raw))
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        (start,) = manifest["decoder_start"].values()
        manifest |= {"languages": ["en", target], "directions": [["en", target]], "decoder_start": {target: start}}
        manifest["sha256"][WEIGHTS_FILE] = sha256_file(weights)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def ct2_copies(base: Path, out: Path, count: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    dirs = []
    for i in range(count):
        folder = out / f"ct2-en-x{i:02d}"
        if not (folder / "model.bin").is_file():
            shutil.copytree(base, folder)
        dirs.append(folder)
    return dirs


async def _load(url: str, seconds: float, count: int, sentences: list[str], seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(count)]
    done: list[float] = []
    codes: dict[int, int] = {}
    end = time.monotonic() + seconds

    async def client(client_id: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            while time.monotonic() < end:
                target = f"x{rng.choices(range(count), weights)[0]:02d}"
                started = time.monotonic()
                r = await http.post("/translate", json={"q": rng.choice(sentences), "source": "en", "target": target})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    done.append(time.monotonic() - started)

    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    return {"requests_ok": len(done), "status_codes": codes, "requests_per_s": round(len(done) / seconds, 2),
            "latency_p50_s": round(statistics.median(done), 3) if done else None}  # fmt: skip


def serve(models: Path, budget: str | None, args: argparse.Namespace, sentences: list[str]) -> dict[str, object]:
    env = {"MTSERVE_MODELS": str(models), "MTSERVE_LOG_LEVEL": "info", "MTSERVE_PIVOT": "off",
           "MTSERVE_REQUEST_TIMEOUT_S": "300", "MTSERVE_PACKED_DIR": str(args.work / "packed"),
           **({"MTSERVE_MEMORY_BUDGET": budget} if budget else {})}  # fmt: skip
    with live_server(env=env, log_dir=args.work, timeout=1800) as server:
        pid, samples, stop = server.process.pid, [pss_mb(server.process.pid)], threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                samples.append(pss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = pss_mb(pid)
        result = asyncio.run(_load(server.url, args.seconds, args.models, sentences, args.seed))
        stop.set()
        sampler.join()
        metrics = httpx.get(server.url + "/metrics").text
        loads = [float(s) for _, s in LOADED.findall(server.log())]
        return {
            "budget": budget or "none", "models": args.models, "clients": CLIENTS, "seconds": args.seconds, **result,
            "startup_s": round(server.startup_s, 1), "pss_at_ready_mb": round(started),
            "pss_peak_mb": round(max(samples)), "pss_end_mb": round(samples[-1]),
            "loads": len(loads), "unloads": round(_sum(metrics, "mtserve_model_unloads_total")),
            "load_p50_s": round(statistics.median(loads), 2) if loads else None,
            "load_p95_s": round(statistics.quantiles(loads, n=20)[-1], 2) if len(loads) >= 2 else None,
            "models_loaded_at_end": metric_value(metrics, "mtserve_models_loaded"),
        }  # fmt: skip


def _sum(exposition: str, name: str) -> float:
    try:
        return metric_value(exposition, name)
    except KeyError:
        return 0.0


def ctranslate2_memory(dirs: list[Path]) -> dict[str, object]:
    import ctranslate2

    before = pss_mb_self()
    held = [ctranslate2.Translator(str(d), device="cpu", intra_threads=1) for d in dirs]
    loaded = pss_mb_self()
    return {"engine": "ctranslate2", "models": len(held), "pss_mb": round(loaded - before),
            "four_workers_mb": round(4 * (loaded - before))}  # fmt: skip


def pss_mb_self() -> float:
    import os

    return pss_mb(os.getpid())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--budget", default="3GiB")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    parser.add_argument("--no-budget", action="store_true", help="all models loaded at start, no budget")
    parser.add_argument("--ctranslate2", action="store_true", help="CTranslate2 holding the same models")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dirs = prepare(args.work / "base")
    if args.ctranslate2:
        print(json.dumps(ctranslate2_memory(ct2_copies(dirs[("ctranslate2", "int8")], args.work / "ct2", args.models))))
        return
    models = copies(dirs[("mtserve-onnx", "int8")], args.work / "models", args.models)
    sentences = test_pairs(args.data_dir)[0][:200]
    print(json.dumps(serve(models, None if args.no_budget else args.budget, args, sentences)), flush=True)


if __name__ == "__main__":
    main()
