"""The HTTP path alone: what a request costs the service besides its model work.

    python bench/http_path.py [--requests 300] [--gap-ms 25] [--rounds 3]

Starts the service (`mtserve serve`, default model) in a process whose translator answers each
batch it has seen before from a copy of its first answer, after holding the worker for
`--gap-ms` (sleeping, the cores idle, as they are while a one-sentence search waits on nothing
else). The first 50 test2016 sentences are translated once for real, then one client sends
`--requests` of them one after the other to `/v1/translate`. What a request takes beyond the gap
is the HTTP path: parsing, validation, splitting, tokenization, the scheduler, the hand-offs to
the worker thread and back, the response, and the client's own share. `--gap-ms 0` gives the
path with every cache warm, which a real request never sees.

Prints per round the client's p50 and mean milliseconds less the gap, and the server's CPU
milliseconds per request; then the medians over rounds.

    python bench/http_path.py --compare OTHER_CHECKOUT [--block 10] [--requests 1000] [--gap-ms 0]

With `--compare`, another checkout's server (its own bench/http_path.py, on this interpreter)
runs beside this one's, and the client alternates between the two every `--block` requests, the
order swapped every round, so that both see the same load of a shared machine. Per round and as
medians: each server's p50 and CPU milliseconds a request, and this checkout's less the other's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DISTINCT = 50


def serve(gap_s: float) -> None:
    """The service, its translator answering batches it has seen from the first answer's copy."""
    from bench.common import answer_searches_from_cache
    from service.cli import main

    answer_searches_from_cache(gap_s)
    sys.argv = ["mtserve", "serve"]
    main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--compare", type=Path, default=None, help="another checkout to alternate with")
    parser.add_argument("--block", type=int, default=10, help="requests to one server before the other's turn")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.gap_ms / 1000)
        return
    if args.compare is not None:
        compare(args)
        return

    from bench.http_load import load, read_sentences
    from service.api.launcher import cpu_seconds, live_server

    distinct = read_sentences(args.data_dir, DISTINCT)
    sentences = [distinct[i % DISTINCT] for i in range(args.requests)]
    env = {"MTSERVE_THREADS": str(args.threads), "MTSERVE_LOG_LEVEL": "warning"}
    rows: list[dict[str, float]] = []
    with live_server(env=env, arguments=[__file__, "--serve", "--gap-ms", str(args.gap_ms)]) as server:
        asyncio.run(load([server.url], distinct, 1, 5))  # every answer made once, for real
        for round_index in range(args.rounds):
            cpu = cpu_seconds(server.process.pid)
            result = asyncio.run(load([server.url], sentences, 1, 5))
            row = {
                "round": round_index,
                "path_p50_ms": round(result["p50_ms"] - args.gap_ms, 2),
                "path_mean_ms": round(result["mean_ms"] - args.gap_ms, 2),
                "server_cpu_ms_per_request": round((cpu_seconds(server.process.pid) - cpu) * 1000 / len(sentences), 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    medians = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0] if k != "round"}
    print(json.dumps({"summary": "http path", "gap_ms": args.gap_ms, **medians}))


async def _alternate(
    urls: list[str], pids: list[int], sentences: list[str], block: int, swap: bool
) -> list[tuple[float, float]]:
    """Each server's (p50 ms, CPU ms a request) over `sentences`, sent to each in turn by blocks."""
    from bench.http_load import translate_one
    from service.api.launcher import cpu_seconds

    latencies: list[list[float]] = [[] for _ in urls]
    cpu = [0.0 for _ in urls]
    order = list(range(len(urls)))[::-1] if swap else list(range(len(urls)))
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(aiohttp.ClientSession(url)) for url in urls]
        for start in range(0, len(sentences), block):
            for k in order:
                used = cpu_seconds(pids[k])
                for text in sentences[start : start + block]:
                    latencies[k].append(await translate_one(sessions[k], text, 5))
                cpu[k] += cpu_seconds(pids[k]) - used
    return [(statistics.median(lat) * 1000, cpu[k] * 1000 / len(sentences)) for k, lat in enumerate(latencies)]


def compare(args: argparse.Namespace) -> None:
    from bench.http_load import read_sentences
    from service.api.launcher import live_server

    other_script = args.compare.resolve() / "bench" / "http_path.py"
    if not other_script.is_file():
        raise SystemExit(f"--compare: {args.compare} has no bench/http_path.py")
    distinct = read_sentences(args.data_dir, DISTINCT)
    sentences = [distinct[i % DISTINCT] for i in range(args.requests)]
    env = {"MTSERVE_THREADS": str(args.threads), "MTSERVE_LOG_LEVEL": "warning"}
    serving = ["--serve", "--gap-ms", str(args.gap_ms)]
    rows: list[dict[str, float]] = []
    with (
        live_server(env=env, arguments=[__file__, *serving]) as this,
        live_server(env=env, arguments=[str(other_script), *serving]) as other,
    ):
        urls, pids = [this.url, other.url], [this.process.pid, other.process.pid]
        asyncio.run(_alternate(urls, pids, distinct, DISTINCT, False))  # every answer made once, for real
        for round_index in range(args.rounds):
            (this_p50, this_cpu), (other_p50, other_cpu) = asyncio.run(
                _alternate(urls, pids, sentences, args.block, swap=round_index % 2 == 1)
            )
            row = {
                "round": round_index,
                "this_p50_ms": round(this_p50, 3),
                "other_p50_ms": round(other_p50, 3),
                "this_cpu_ms_per_request": round(this_cpu, 3),
                "other_cpu_ms_per_request": round(other_cpu, 3),
                "cpu_difference_ms": round(this_cpu - other_cpu, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    medians = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0] if k != "round"}
    print(
        json.dumps(
            {"summary": "http path, two checkouts", "other": str(args.compare), "gap_ms": args.gap_ms, **medians}
        )
    )


if __name__ == "__main__":
    main()
