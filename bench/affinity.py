"""Server processes held to cores of their own against left to the kernel (MTSERVE_CPU_AFFINITY).

    python bench/affinity.py [--model DIR] [--processes 2] [--rounds 6] [--load 800]

Two servers of `--processes` processes on the same model, one with `MTSERVE_CPU_AFFINITY=auto`
(the default: each process held to its own share of the CPUs) and one with `off`, both running
throughout. Each round, one client sends the first 40 test2016 sentences one request at a time,
to each server in turn five sentences at a time (the order swapped from block to block), so that
both see the same load of a shared machine; then 16 clients send `--load` sentences to each
server in turn (the order swapped every round), each client its next sentence as soon as the
previous answer is in. Prints per round each server's one-client p50 and 16-client sentences a
second; then the medians over rounds, the median of the per-sentence differences (held less
unheld, the same sentence seconds apart) and the median of the per-round throughput ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import post_translation, service_connection, test_pairs  # noqa: E402
from service.api.launcher import live_server  # noqa: E402

SENTENCES = 40
BLOCK = 5
CLIENTS = 16
SETTINGS = ("auto", "off")


def _translate(connection: http.client.HTTPConnection, text: str) -> float:
    """Milliseconds for one sentence's request and answer."""
    started = time.perf_counter()
    post_translation(connection, text, "en", "fr", 5)
    return (time.perf_counter() - started) * 1000


def _load(url: str, texts: list[str], count: int) -> float:
    """Sentences a second for `count` requests from CLIENTS clients."""
    next_index = iter(range(count))
    lock = threading.Lock()

    def client() -> None:
        connection = service_connection(url)
        with contextlib.closing(connection):
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                _translate(connection, texts[index % len(texts)])

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--load", type=int, default=800, help="sentences the 16 clients send each server a round")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    texts = test_pairs(args.data_dir)[0]
    with contextlib.ExitStack() as stack:
        urls = {}
        for setting in SETTINGS:
            env = {"MTSERVE_MODEL_DIR": str(args.model.resolve()), "MTSERVE_PROCESSES": str(args.processes),
                   "MTSERVE_CPU_AFFINITY": setting, "MTSERVE_LOG_LEVEL": "warning"}  # fmt: skip
            urls[setting] = stack.enter_context(live_server(env=env)).url
        connections = {
            setting: stack.enter_context(contextlib.closing(service_connection(url))) for setting, url in urls.items()
        }
        for setting in SETTINGS:  # warm: every process, through its connections
            _load(urls[setting], texts, 4 * CLIENTS)
        latencies: dict[str, list[list[float]]] = {setting: [] for setting in SETTINGS}
        rates: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
        for round_index in range(args.rounds):
            for setting in SETTINGS:
                latencies[setting].append([])
            for block, start in enumerate(range(0, SENTENCES, BLOCK)):
                order = SETTINGS if (round_index + block) % 2 == 0 else SETTINGS[::-1]
                for setting in order:
                    for text in texts[start : start + BLOCK]:
                        latencies[setting][-1].append(_translate(connections[setting], text))
                    time.sleep(0.05)
            for setting in SETTINGS if round_index % 2 == 0 else SETTINGS[::-1]:
                rates[setting].append(_load(urls[setting], texts, args.load))
            p50 = {s: round(statistics.median(latencies[s][-1]), 2) for s in SETTINGS}
            rate = {s: round(rates[s][-1], 1) for s in SETTINGS}
            print(
                json.dumps({"round": round_index, "one_client_p50_ms": p50, "clients_16_sent_per_s": rate}), flush=True
            )
    flat = {s: [t for r in latencies[s] for t in r] for s in SETTINGS}
    differences = [held - unheld for held, unheld in zip(flat["auto"], flat["off"], strict=True)]
    ratios = [held / unheld for held, unheld in zip(rates["auto"], rates["off"], strict=True)]
    print(json.dumps({
        "processes": args.processes,
        "one_client_p50_ms": {s: round(statistics.median(flat[s]), 2) for s in SETTINGS},
        "one_client_median_paired_difference_ms": round(statistics.median(differences), 2),
        "clients_16_sent_per_s": {s: round(statistics.median(rates[s]), 1) for s in SETTINGS},
        "clients_16_median_ratio": round(statistics.median(ratios), 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
