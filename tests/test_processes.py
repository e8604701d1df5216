"""A server of several processes (MTSERVE_PROCESSES): one port, every process answering, one
exposition of the metrics, translated files downloadable from any process, a dead process
replaced, SIGTERM draining them all, and one rate limit counted across them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.launcher import (
    LiveServer,
    cpu_seconds,
    established_connections,
    listens,
    live_server,
    metric_value,
    server_processes,
    until_each_taken,
)
from service.api.processes import MAX_RESTARTS

pytestmark = pytest.mark.slow
SENTENCE = "A man in a blue shirt is standing on a ladder and cleaning a window."
PROCESSES = 2
# What each of the 16 requests sent at once before a SIGTERM carries: sentences long enough to be in
# flight still, and few enough that all 16 fit the two processes' queues (256 sentences in all).
DRAINED_SENTENCES = 8
LONG_SENTENCE = (
    "A man in a blue shirt is standing on a ladder and cleaning a window while two children in red coats "
    "play with a brown dog on the wet grass beside an old wooden fence"
)


def _children(server: LiveServer) -> list[int]:
    return server_processes(server.process.pid)


def _on_new_connections(server: LiveServer, count: int, body: dict[str, object]) -> list[httpx.Response]:
    """`count` requests at once, each on a connection of its own, so that the kernel hands them to
    whichever process accepts first."""

    async def run() -> list[httpx.Response]:
        async def one() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                return await client.post("/translate", json=body)

        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def _wait_for_children(server: LiveServer, count: int, timeout: float = 60) -> list[int]:
    """The server's `count` processes once every one listens: one that replaces a dead process
    exists some seconds before it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children(server)
        if len(children) == count and all(listens(pid, server.port) for pid in children):
            return children
        time.sleep(0.1)
    raise AssertionError(f"{count} serving processes expected, found {_children(server)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"MTSERVE_PROCESSES": str(PROCESSES), "MTSERVE_LOG_LEVEL": "info"}
    with live_server(env=env, log_dir=tmp_path_factory.mktemp("processes")) as live:
        _wait_for_children(live, PROCESSES)
        yield live


def test_every_process_answers_and_the_metrics_count_them_all(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        alone = http.post("/translate", json={"q": SENTENCE, "source": "en", "target": "fr"}).json()["translatedText"]
        before = metric_value(http.get("/metrics").text, "mtserve_http_requests_total")
    children = _wait_for_children(server, PROCESSES)
    cpu_before = {pid: cpu_seconds(pid) for pid in children}

    async def kept_alive() -> tuple[list[httpx.Response], list[int]]:
        """16 connections, opened as soon as the server is ready and kept: every process listens by
        then, and the kernel spreads them. Also how many each process holds, before they close."""
        body = {"q": [SENTENCE] * 2, "source": "en", "target": "fr"}
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            responses = await asyncio.gather(*(client.post("/translate", json=body) for _ in range(48)))
            return list(responses), [established_connections(pid, server.port) for pid in children]

    responses, held = asyncio.run(kept_alive())
    assert sum(held) == 16 and 0 not in held, held
    assert [r.status_code for r in responses] == [200] * 48
    assert all(r.json()["translatedText"] == [alone, alone] for r in responses)
    worked = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in children}
    assert all(seconds > 0 for seconds in worked.values()), f"a process served nothing: {worked}"
    generated = {  # from whichever process accepts each connection: one sum
        metric_value(httpx.get(server.url + "/metrics").text, "mtserve_generated_tokens_total") for _ in range(6)
    }
    assert len(generated) == 1 and generated.pop() > 48 * 2 * 5, generated
    after = metric_value(httpx.get(server.url + "/metrics").text, "mtserve_http_requests_total")
    assert after - before == 48 + 6 + 1  # the translations, the six expositions and the first one
    assert metric_value(httpx.get(server.url + "/metrics").text, "mtserve_models_loaded") == PROCESSES


def test_each_process_and_all_its_threads_hold_to_cpus_of_their_own(server: LiveServer) -> None:
    allowed = os.sched_getaffinity(0)
    if len(allowed) < PROCESSES:
        pytest.skip(f"{len(allowed)} CPU: fewer than the processes, which are then left to the kernel")
    held = []
    for pid in _wait_for_children(server, PROCESSES):
        threads = {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}
        assert len(threads) == 1, f"the threads of process {pid} hold to different CPUs: {threads}"
        held.append(threads.pop())
    assert all(cpus <= allowed and len(cpus) == len(allowed) // PROCESSES for cpus in held), held
    assert not held[0] & held[1], held


def test_a_file_translated_by_one_process_downloads_from_any(server: LiveServer) -> None:
    text = "\n".join(f"Line {i}: a dog runs on the beach." for i in range(5))
    for _ in range(6):  # uploads and downloads on connections of their own
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/translate_file", data={"source": "en", "target": "fr"}, files={"file": ("a.txt", text)})
            assert r.status_code == 200, r.text
            url = r.json()["translatedFileUrl"].replace("http://testserver", server.url)
        downloads = [httpx.get(url, timeout=60) for _ in range(4)]
        assert [d.status_code for d in downloads] == [200] * 4
        assert all(d.text.count("chien") == 5 for d in downloads)


def test_a_process_that_dies_is_replaced(server: LiveServer) -> None:
    victim = _wait_for_children(server, PROCESSES)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while victim in _children(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = _wait_for_children(server, PROCESSES)
    assert victim not in children
    cpu_before = {pid: cpu_seconds(pid) for pid in children}
    responses = _on_new_connections(server, 16, {"q": SENTENCE, "source": "en", "target": "fr"})
    assert [r.status_code for r in responses] == [200] * 16
    assert _children(server) == children
    worked = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in children}
    assert all(seconds > 0 for seconds in worked.values()), f"a process served nothing: {worked}"
    assert "starting another" in server.log()
    in_flight = metric_value(httpx.get(server.url + "/metrics").text, "mtserve_http_requests_in_flight")
    assert in_flight == 1, "the dead process's requests in flight still count"  # the /metrics request itself


def test_sigterm_drains_every_process_and_exits_0(server: LiveServer) -> None:
    children = _wait_for_children(server, PROCESSES)

    async def run() -> tuple[list[httpx.Response], float]:
        body = {"q": [LONG_SENTENCE] * DRAINED_SENTENCES, "source": "en", "target": "fr"}

        async def one() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await client.post("/translate", json=body)

        tasks = [asyncio.ensure_future(one()) for _ in range(16)]
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as probe:

            async def metrics() -> str:
                return (await probe.get("/metrics")).text

            await until_each_taken(metrics, tasks)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        return list(await asyncio.gather(*tasks)), signalled

    responses, signalled = asyncio.run(run())
    code = server.process.wait(timeout=60)
    assert [r.status_code for r in responses] == [200] * 16
    assert all(len(r.json()["translatedText"]) == DRAINED_SENTENCES for r in responses)
    assert code == 0 and time.monotonic() - signalled < 25
    assert all(not Path(f"/proc/{pid}").exists() for pid in children), "a server process outlived the parent"
    assert server.log().count("draining (up to") == PROCESSES


def test_connections_made_at_the_first_ready_answer_spread_over_every_process(tmp_path: Path) -> None:
    """A load balancer that opens its kept-alive connections the moment /ready first answers 200
    keeps them for good: each process must listen by then. Before, one process could answer while
    the other still waited out its poll of the start gate, and all 16 connections went to the first
    (3 of 15 starts with one thread and one batch worker a process)."""
    env = {"MTSERVE_PROCESSES": "2", "MTSERVE_THREADS": "1", "MTSERVE_WORKERS": "1", "MTSERVE_LOG_LEVEL": "warning"}
    with live_server(env=env, log_dir=tmp_path, ready_poll_s=0.002) as server:
        sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(16)]
        try:
            children = _children(server)
            deadline = time.monotonic() + 10  # until each accepted connection shows as its process's
            while sum(split := [established_connections(pid, server.port) for pid in children]) < 16:
                assert time.monotonic() < deadline, f"{sum(split)} of 16 connections accepted"
                time.sleep(0.05)
        finally:
            for sock in sockets:
                sock.close()
    assert len(children) == 2
    assert min(split) > 0, f"16 connections made at the first ready answer went {split} over the processes"


def test_a_rate_limit_counts_a_clients_requests_in_every_process(tmp_path: Path) -> None:
    """24 requests from one address on connections of their own, which the kernel spreads over both
    processes: exactly the limit of 12 pass. Counted per process, 12 would pass only if every
    connection went to one process."""
    env = {"MTSERVE_PROCESSES": str(PROCESSES), "MTSERVE_REQ_LIMIT": "12"}
    with live_server(env=env, log_dir=tmp_path) as server:
        _wait_for_children(server, PROCESSES)
        responses = _on_new_connections(server, 24, {"q": "Hello.", "source": "en", "target": "fr"})
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 12 + [429] * 12
    refused = [r for r in responses if r.status_code == 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 61 and "Slowdown" in r.json()["error"] for r in refused)


def test_processes_that_keep_dying_stop_the_server(tmp_path: Path) -> None:
    """A crash loop (a process killed again as soon as it is back) ends with exit 1, not for ever."""
    with live_server(env={"MTSERVE_PROCESSES": "2"}, log_dir=tmp_path) as server:
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while server.process.poll() is None and time.monotonic() < deadline:
            for pid in set(_children(server)) - killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        assert server.process.wait(timeout=60) == 1
        assert "times within 60 s; stopping" in server.log()
        assert len(killed) >= MAX_RESTARTS + 1, killed


def test_sigterm_while_a_replacement_starts_is_a_clean_stop(tmp_path: Path) -> None:
    """A process that replaces a dead one and is told to stop before it serves has lost nothing."""
    with live_server(env={"MTSERVE_PROCESSES": "2"}, log_dir=tmp_path) as server:
        victim = _wait_for_children(server, PROCESSES)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "starting another" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()[-3000:]
