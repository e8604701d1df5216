"""HTTP load on loopback: `python bench/http_load.py --clients 1 8 32 64 [--beam-size 5]`.

Starts its own server (`mtserve serve`, default model or `--model DIR`), then for each client count sends the
test2016 English sentences one per request, each client sending its next sentence as soon as
the previous answer arrives. Prints one JSON object per client count: clients, requests,
seconds, sent_per_s, p50_ms/p95_ms/p99_ms, mean_batch (sentences per model batch, from
/metrics), offline_sent_per_s (the same sentences through the runtime directly, as
`mtserve bench` runs them, with the server's thread count), the CPU seconds the server and
this load generator used, and the server's resident memory afterwards (RSS, and PSS, which counts
the pages of shared weight files once between servers).

`--servers N` starts N servers instead of one, each with 1/N of the threads and batch workers,
and spreads the clients over them, round robin; the CPU, memory and batches are their sums. One
interpreter serves both cores in a server; this measures what several would give
(docs/BENCHMARKS.md). `--processes N` starts one server of N processes (MTSERVE_PROCESSES), each
with 1/N of the threads and batch workers; its CPU and memory are the processes' sums, and
`connections_by_process` says how many of the clients' connections each process held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import test_pairs  # noqa: E402
from service.api.launcher import (  # noqa: E402
    LiveServer,
    cpu_seconds,
    established_connections,
    live_server,
    metric_value,
    pss_mb,
    rss_mb,
    server_processes,
)
from service.manifest import DEFAULT_MODEL_DIR  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def read_sentences(data_dir: Path | str | None, limit: int) -> list[str]:
    """The first `limit` English sentences of Multi30k test2016."""
    sources, _ = test_pairs(data_dir)
    return list(sources[:limit])


async def _batch_metrics(clients: list[aiohttp.ClientSession]) -> tuple[float, float]:
    """(batches, sentences batched) so far, summed over the servers."""
    texts = [await (await client.get("/metrics")).text() for client in clients]
    return (
        sum(metric_value(t, "mtserve_batch_sentences_count") for t in texts),
        sum(metric_value(t, "mtserve_batch_sentences_sum") for t in texts),
    )


async def translate_one(client: aiohttp.ClientSession, text: str, beam: int) -> float:
    """One sentence through `/v1/translate`, en→fr; the seconds until its answer is read."""
    t0 = time.perf_counter()
    body = {"texts": [text], "source": "en", "target": "fr", "beam_size": beam}
    async with client.post("/v1/translate", json=body) as response:
        await response.read()
        response.raise_for_status()
    return time.perf_counter() - t0


async def load(
    urls: list[str], sentences: list[str], clients: int, beam: int, all_open: Callable[[], None] | None = None
) -> dict[str, float]:
    """`all_open` runs once when every client has its answer to a first request: all connections open."""
    latencies: list[float] = []
    queue = iter(sentences)
    answered: set[int] = set()
    # aiohttp rather than httpx: the load generator shares the server's two cores, and for 1,000
    # requests at 64 clients httpx spent 3.5 s of CPU where aiohttp spent 0.2 s, enough to leave
    # the server short of requests in flight (docs/BENCHMARKS.md).
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients)))
            for url in urls
        ]
        before = await _batch_metrics(sessions)

        async def worker(index: int, client: aiohttp.ClientSession) -> None:
            for text in queue:
                latencies.append(await translate_one(client, text, beam))
                if all_open is not None and index not in answered:
                    answered.add(index)
                    if len(answered) == clients:
                        all_open()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i, sessions[i % len(sessions)]) for i in range(clients)))
        seconds = time.perf_counter() - t0
        after = await _batch_metrics(sessions)
    batches, batched = after[0] - before[0], after[1] - before[1]
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "sent_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "mean_batch": round(batched / max(batches, 1), 2),
    }


def _connections_by_process(server: LiveServer, into: list[int]) -> None:
    """How the kernel spread the clients' connections over a server's processes, fewest first."""
    into.extend(sorted(established_connections(pid, server.port) for pid in server_processes(server.process.pid)))


def offline(model_dir: Path, sentences: list[str], beam: int, threads: int) -> float:
    translator = Translator.load(model_dir, intra_op_threads=threads)
    translator.translate(sentences[:16], "fr", DecodeOptions(beam_size=beam))  # warm up
    t0 = time.perf_counter()
    translator.translate(sentences, "fr", DecodeOptions(beam_size=beam))
    return len(sentences) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="exported model directory")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--servers", type=int, default=1, help="servers sharing the threads and the clients")
    parser.add_argument("--processes", type=int, default=1, help="processes of one server (MTSERVE_PROCESSES)")
    args = parser.parse_args()
    if not 1 <= args.servers * args.processes <= args.threads:
        parser.error(f"--servers {args.servers} times --processes {args.processes}: from 1 to --threads")
    sentences = read_sentences(args.data_dir, args.sentences)
    offline_rate = offline(args.model, sentences, args.beam_size, args.threads)
    env = {
        "MTSERVE_MODEL_DIR": str(args.model.resolve()),
        "MTSERVE_THREADS": str(args.threads // (args.servers * args.processes)),
        "MTSERVE_PROCESSES": str(args.processes),
        "MTSERVE_QUEUE_SIZE": "4096",
        "MTSERVE_LOG_LEVEL": "warning",
    }
    if args.servers * args.processes > 1:  # else the server's own default: one batch worker per core
        env["MTSERVE_WORKERS"] = str(args.threads // (args.servers * args.processes))
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(live_server(env=env)) for _ in range(args.servers)]
        print(json.dumps({"startup_to_ready_s": round(max(s.startup_s for s in servers), 2)}), flush=True)
        pids = [pid for server in servers for pid in (server.process.pid, *server_processes(server.process.pid))]
        for clients in args.clients:
            server_cpu, client_cpu = sum(map(cpu_seconds, pids)), cpu_seconds()
            split: list[int] = []  # counted inside the timed load: only where there is a split to count
            count = functools.partial(_connections_by_process, servers[0], split) if args.processes > 1 else None
            row: dict[str, object] = {
                **asyncio.run(load([s.url for s in servers], sentences, clients, args.beam_size, count))
            }
            row["servers"], row["processes"] = args.servers, args.processes
            if args.processes > 1:
                row["connections_by_process"] = split
            row["offline_sent_per_s"] = round(offline_rate, 1)
            # Who used the two cores: the server processes and this load generator.
            row["server_cpu_s"] = round(sum(map(cpu_seconds, pids)) - server_cpu, 1)
            row["client_cpu_s"] = round(cpu_seconds() - client_cpu, 1)
            row["server_rss_mb"] = round(sum(map(rss_mb, pids)), 1)
            row["server_pss_mb"] = round(sum(map(pss_mb, pids)), 1)  # shared weight pages counted once
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
