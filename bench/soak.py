"""Soak: `python bench/soak.py [--minutes 10] [--clients 32]`. Not part of the test suite.

Starts its own server and keeps N clients sending single test2016 sentences (beam 5) for the
given time. Every minute it prints one JSON line: minute, requests, sent_per_s, p95_ms, rss_mb,
errors. At the end one summary line: throughput drift (last minute against the first) and RSS
growth (end against the end of the first minute, after warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_load import read_sentences  # noqa: E402
from service.api.launcher import live_server, rss_mb  # noqa: E402


async def soak(url: str, pid: int, sentences: list[str], clients: int, minutes: float) -> list[dict[str, float]]:
    source = itertools.cycle(sentences)
    end = time.monotonic() + minutes * 60
    window: list[float] = []
    errors = 0
    rows: list[dict[str, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t0 = time.perf_counter()
                r = await client.post("/translate", json={"q": next(source), "source": "en", "target": "fr"})
                if r.status_code == 200:
                    window.append(time.perf_counter() - t0)
                else:
                    errors += 1

        async def reporter() -> None:
            nonlocal errors
            minute = 0
            while time.monotonic() < end:
                await asyncio.sleep(min(60.0, max(0.0, end - time.monotonic())))
                minute += 1
                done, window[:] = list(window), []
                ms = np.asarray(done) * 1000 if done else np.zeros(1)
                row = {"minute": minute, "requests": len(done), "sent_per_s": round(len(done) / 60, 1),
                       "p95_ms": round(float(np.percentile(ms, 95)), 1), "rss_mb": round(rss_mb(pid), 1),
                       "errors": errors}  # fmt: skip
                errors = 0
                rows.append(row)
                print(json.dumps(row), flush=True)

        await asyncio.gather(reporter(), *(worker() for _ in range(clients)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    sentences = read_sentences(args.data_dir, 1000)
    with live_server(env={"MTSERVE_LOG_LEVEL": "warning", "MTSERVE_THREADS": "2"}) as server:
        rows = asyncio.run(soak(server.url, server.process.pid, sentences, args.clients, args.minutes))
    first, last = rows[0], rows[-1]
    print(json.dumps({
        "summary": True, "minutes": len(rows), "clients": args.clients,
        "throughput_drift_pct": round(100 * (last["sent_per_s"] - first["sent_per_s"]) / first["sent_per_s"], 1),
        "rss_growth_pct": round(100 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"], 1),
        "rss_first_mb": first["rss_mb"], "rss_last_mb": last["rss_mb"],
        "errors": sum(r["errors"] for r in rows),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
