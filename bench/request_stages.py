"""One client's request, stage by stage inside the server, in wall-clock time.

    python bench/request_stages.py [--model DIR] [--threads 1] [--rounds 4] [--hold-server CPU]
                                   [--route native|libretranslate]

Starts the service (`mtserve serve` on DIR) in a process that stamps the clock where a request
passes each stage: the middleware's entry, the scheduler's queue, the hand-off to the search
thread and back, the search itself, the response's start, its body sent, the middleware's exit.
One client then sends the first 40 test2016 sentences one after the other to `/v1/translate`
(the path of bench/one_sentence.py's `mtserve-http`), or with `--route libretranslate` to
LibreTranslate's `/translate` at the server's default beam (bench/libretranslate.py's requests),
`--rounds` times. The searches are real; the stamps cost a microsecond each.

Per server and round it prints the client's p50 milliseconds and the median microseconds of each
stage; the summary gives the medians over rounds:

- `routing`: the middleware, routing and the body's validation, until the translation service;
- `preparation`: the service's normalisation, splitting, tokenization and queueing;
- `to_queue_exit`: the scheduler's dispatch, until the batch's task runs;
- `to_search_thread`, `from_search_thread`: the hand-off to the search thread and back to the
  event loop (with the batch's metrics and answers); where the scheduler runs a lone client's
  sentence on the event loop itself (service/api/scheduler.py), the batch's metrics and answers
  alone;
- `search`: `Translator.search`, the model's whole work;
- `to_request`: from the batch's end to the request's own task;
- `after_queue`: from the answer back in the request's task to the response's start (the text,
  the response body);
- `send`: from the response's start until its body is written to the socket;
- `exit`: the middleware's own end;
- `client`: what the client's latency holds besides the server's stages (its request, its
  reading of the answer, the sockets).

With `--hold-server CPU` a second server, held to that CPU, runs beside the first (which the
kernel places), and the client alternates between the two every round (the order swapped each
round): where the client shares a core with the server, the kernel may run it on the server's
core as it wakes, and the server's stages then hold the client's own work.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ROUTES, post_text  # noqa: E402

SENTENCES = 40
BEAM = 5
LIBRETRANSLATE_BEAM = 4
STAMPS_WAIT_S = 5.0
# (stage, first stamp, last stamp): the stamps serve() writes, in a request's order
STAGES = (
    ("routing", "entry", "service"),
    ("preparation", "service", "enqueue"),
    ("to_queue_exit", "enqueue", "execute"),
    ("to_search_thread", "execute", "search"),
    ("search", "search", "search_end"),
    ("from_search_thread", "search_end", "execute_end"),
    ("to_request", "execute_end", "dequeue"),
    ("after_queue", "dequeue", "response_start"),
    ("send", "response_start", "body_sent"),
    ("exit", "body_sent", "exit"),
)


def stage_durations(stamps: dict[str, int], client_ns: int) -> dict[str, float]:
    """One request's stages in microseconds, from its stamps (nanoseconds), and what the client's
    latency `client_ns` holds besides the server's time from entry to exit."""
    durations = {name: (stamps[last] - stamps[first]) / 1000 for name, first, last in STAGES}
    durations["client"] = (client_ns - (stamps["exit"] - stamps["entry"])) / 1000
    return durations


def serve(stamps_path: Path, cpu: int | None, route: str = "native") -> None:
    """The service, stamping each request's stages into `stamps_path` (one JSON line a request).
    One request at a time: the stamps of one request are one dict."""
    from service.api import middleware, scheduler, translation
    from service.cli import main
    from service.runtime.translator import Translator

    if cpu is not None:  # every thread: those the imports started, and (inheriting it) those started later
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), {cpu})
    out = stamps_path.open("a", buffering=1)
    now = time.perf_counter_ns
    current: dict[str, int] = {}

    def stamped_async(method: Callable[..., Coroutine[Any, Any, Any]], start: str, end: str) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            current[start] = now()
            result = await method(*args, **kwargs)
            current[end] = now()
            return result

        return wrapper

    call = middleware.RequestContextMiddleware.__call__

    async def entered(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != ROUTES[route]:
            await call(self, scope, receive, send)
            return
        current.clear()
        current["entry"] = now()

        async def stamped_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                current["response_start"] = now()
            await send(message)
            if message["type"] == "http.response.body":
                current["body_sent"] = now()

        await call(self, scope, receive, stamped_send)
        current["exit"] = now()
        out.write(json.dumps(current) + "\n")

    middleware.RequestContextMiddleware.__call__ = entered  # type: ignore[method-assign]
    service_translate = translation.TranslationService.translate

    async def translating(self: Any, *args: Any, **kwargs: Any) -> Any:
        current["service"] = now()
        return await service_translate(self, *args, **kwargs)

    translation.TranslationService.translate = translating  # type: ignore[method-assign]
    scheduler.Scheduler.translate = stamped_async(scheduler.Scheduler.translate, "enqueue", "dequeue")  # type: ignore[method-assign]
    scheduler.Scheduler._execute = stamped_async(scheduler.Scheduler._execute, "execute", "execute_end")  # type: ignore[method-assign]
    on_loop = scheduler.Scheduler._execute_on_loop

    def executed_on_loop(self: Any, *args: Any) -> None:
        current["execute"] = now()
        on_loop(self, *args)
        current["execute_end"] = now()

    scheduler.Scheduler._execute_on_loop = executed_on_loop  # type: ignore[method-assign,assignment]
    search = Translator.search

    def searched(self: Translator, *args: Any, **kwargs: Any) -> Any:
        current["search"] = now()
        result = search(self, *args, **kwargs)
        current["search_end"] = now()
        return result

    Translator.search = searched  # type: ignore[method-assign]
    sys.argv = ["mtserve", "serve"]
    main()


def stamped_requests(
    connection: http.client.HTTPConnection,
    texts: list[str],
    stamps_path: Path,
    source: str,
    target: str,
    route: str = "native",
) -> list[dict[str, float]]:
    """Each text sent alone, in turn, on `connection` to the stamping server: its stages (stage_durations)."""
    seen = len(stamps_path.read_text().splitlines())
    latencies = []
    for text in texts:
        started = time.perf_counter_ns()
        post_text(connection, route, text, source, target, BEAM)  # LibreTranslate's at the server's beam
        latencies.append(time.perf_counter_ns() - started)
    # the server writes a request's stamps after its answer has left: the last may still be on its way
    deadline = time.monotonic() + STAMPS_WAIT_S
    while len(lines := stamps_path.read_text().splitlines()[seen:]) < len(texts) and time.monotonic() < deadline:
        time.sleep(0.01)
    records = [json.loads(line) for line in lines]
    if len(records) != len(texts):
        raise RuntimeError(f"{len(records)} stamped requests for {len(texts)} sent")
    return [{"client_total": ns / 1000, **stage_durations(r, ns)} for r, ns in zip(records, latencies, strict=True)]


def _round(
    connection: http.client.HTTPConnection, texts: list[str], stamps_path: Path, source: str, target: str, route: str
) -> dict[str, float]:
    """The client's p50 ms over `texts`, and each stage's median µs."""
    stages = stamped_requests(connection, texts, stamps_path, source, target, route)
    medians = {
        name: round(statistics.median(s[name] for s in stages), 1) for name in stages[0] if name != "client_total"
    }
    return {"client_p50_ms": round(statistics.median(s["client_total"] for s in stages) / 1000, 3), **medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hold-server", type=int, default=None, metavar="CPU", help="a second server held to CPU")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--route", choices=list(ROUTES), default="native", help="the route the client calls")
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.cpu, args.route)
        return

    import contextlib
    import tempfile

    from bench.common import bench_data, service_connection, test_pairs
    from service.api.launcher import live_server

    source, target = bench_data().directions[0]
    texts = test_pairs(args.data_dir)[0][:SENTENCES]
    env = {"MTSERVE_MODEL_DIR": str(args.model.resolve()), "MTSERVE_THREADS": str(args.threads),
           "MTSERVE_LOG_LEVEL": "warning"}  # fmt: skip
    if args.route == "libretranslate":  # argostranslate's beam, which bench/libretranslate.py gives every server
        env["MTSERVE_DEFAULT_BEAM_SIZE"] = str(LIBRETRANSLATE_BEAM)
    servers: list[tuple[str, int | None]] = [("kernel-placed", None)]
    if args.hold_server is not None:
        servers.append((f"held to CPU {args.hold_server}", args.hold_server))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in servers}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        running = []
        for index, (name, cpu) in enumerate(servers):
            stamps = Path(scratch) / f"stamps-{index}.jsonl"
            stamps.touch()
            arguments = [__file__, "--serve", str(stamps), "--route", args.route,
                         *(["--cpu", str(cpu)] if cpu is not None else [])]  # fmt: skip
            server = stack.enter_context(live_server(env=env, arguments=arguments))
            # one client, one connection kept alive throughout, as a program of one user keeps it
            connection = service_connection(server.url)
            stack.callback(connection.close)
            _round(connection, texts[:10], stamps, source, target, args.route)  # warm-up
            running.append((name, connection, stamps))
        for round_index in range(args.rounds):
            for name, connection, stamps in running[:: -1 if round_index % 2 else 1]:
                row = _round(connection, texts, stamps, source, target, args.route)
                rows[name].append(row)
                print(json.dumps({"server": name, "round": round_index, **row}), flush=True)
    for name, server_rows in rows.items():
        medians = {k: round(statistics.median(r[k] for r in server_rows), 3) for k in server_rows[0]}
        print(json.dumps({"summary": name, "route": ROUTES[args.route], "threads": args.threads, **medians}))


if __name__ == "__main__":
    main()
