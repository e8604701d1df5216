"""One request's Python in process: what the service's code costs a request besides its search.

    python bench/request_python.py [--route libretranslate|native] [--requests 500] [--rounds 5]
                                   [--profile N] [--data-dir DIR]

Drives the app's ASGI callable directly (no socket, no server), with the committed model loaded
and started as `mtserve serve` starts it. The translator answers every batch it has seen from its
first answer, so after the warm-up only the service's own Python runs: the middleware, routing,
the body, the checks, splitting and tokenization, the scheduler, the answer's text, the response.
One sentence a request, the first of test2016 in the benchmark's first direction, to
LibreTranslate's `POST /translate` or the native `POST /v1/translate`.
Prints the microseconds a request of each round and their median; `--profile N` then profiles N
more requests and prints the functions by own time.

Every cache is warm here, which in a server a search in between undoes: bench/request_stages.py
measures the same stages there.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ROUTES, request_body  # noqa: E402

WARM_UP = 200


async def _request(app: Any, state: dict[str, Any], path: str, body: bytes) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": dict(state),
    }  # fmt: skip
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: no disconnect
        raise AssertionError("unreachable")

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"{path} answered {status}")


async def measure(args: argparse.Namespace) -> None:
    from bench.common import bench_data, test_pairs
    from service.api.app import create_app

    source, target = bench_data().directions[0]
    text = test_pairs(args.data_dir)[0][0]
    app = create_app()
    path = ROUTES[args.route]
    body = json.dumps(request_body(args.route, text, source, target)).encode()
    async with app.router.lifespan_context(app) as lifespan_state:
        state = dict(lifespan_state or {})
        for _ in range(WARM_UP):
            await _request(app, state, path, body)
        rounds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.requests):
                await _request(app, state, path, body)
            rounds.append((time.perf_counter() - started) / args.requests * 1e6)
        row = {"route": path, "median_us": round(statistics.median(rounds), 1), "rounds_us": [round(r) for r in rounds]}
        print(json.dumps(row), flush=True)
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.profile):
                await _request(app, state, path, body)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=list(ROUTES), default="libretranslate")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile N more requests")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from bench.common import answer_searches_from_cache

    answer_searches_from_cache()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
