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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DISTINCT = 50


def serve(gap_s: float) -> None:
    """The service, its translator answering batches it has seen from the first answer's copy."""
    from service.cli import main
    from service.runtime.translator import Translator

    search = Translator.search
    answers: dict[object, object] = {}

    def answer(self: Translator, sources: list[list[int]], targets: list[str], options: object) -> object:
        key = (tuple(map(tuple, sources)), tuple(targets), options)
        if key not in answers:
            answers[key] = search(self, sources, targets, options)  # type: ignore[arg-type]
        time.sleep(gap_s)
        return answers[key]

    Translator.search = answer  # type: ignore[assignment,method-assign]
    sys.argv = ["mtserve", "serve"]
    main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.gap_ms / 1000)
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


if __name__ == "__main__":
    main()
