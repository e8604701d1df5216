"""The rate limit that several server processes count together (service/api/shared_limits.py)."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from service.api.errors import ApiError
from service.api.shared_limits import PRUNE_EVERY, SharedRateLimiter, create_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(limiter: SharedRateLimiter, client: str) -> ApiError:
    with pytest.raises(ApiError) as refused:
        limiter.hit(client)
    return refused.value


def test_two_processes_limiters_count_one_window_per_client(tmp_path: Path) -> None:
    store, clock = create_store(tmp_path), Clock()
    first, second = SharedRateLimiter(store, 3, clock), SharedRateLimiter(store, 3, clock)
    first.hit("addr:a")
    clock.now += 10
    second.hit("addr:a")
    first.hit("addr:a")
    refused = _refused(second, "addr:a")
    assert refused.status == 429 and "3 per 1 minute" in refused.message
    assert refused.headers["Retry-After"] == "51"  # the first hit leaves the window 50 s from now
    first.hit("addr:b")  # another client has a window of its own
    clock.now += 50.5  # the first hit has left the window, the others not
    second.hit("addr:a")
    assert _refused(first, "addr:a").status == 429


def _hammer(store: Path, attempts: int, start: Barrier, admitted: Queue[int]) -> None:
    limiter, passed = SharedRateLimiter(store, 60), 0
    start.wait(timeout=60)  # all at once
    for _ in range(attempts):
        try:
            limiter.hit("key:shared")
            passed += 1
        except ApiError:
            pass
    admitted.put(passed)


def test_processes_hitting_at_once_admit_exactly_the_limit(tmp_path: Path) -> None:
    store = create_store(tmp_path)
    spawn = multiprocessing.get_context("spawn")
    admitted: Queue[int] = spawn.Queue()
    start = spawn.Barrier(3)
    workers = [spawn.Process(target=_hammer, args=(store, 50, start, admitted)) for _ in range(3)]
    for worker in workers:
        worker.start()
    counts = [admitted.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    assert sum(counts) == 60, counts


def test_expired_hits_of_clients_that_left_are_removed(tmp_path: Path) -> None:
    store, clock = create_store(tmp_path), Clock()
    limiter = SharedRateLimiter(store, 5, clock)
    for client in range(PRUNE_EVERY - 1):
        limiter.hit(f"addr:{client}")
    clock.now += 61
    limiter.hit("addr:new")
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT client FROM hits").fetchall() == [("addr:new",)]


def test_a_missing_store_fails_at_start_and_a_failing_one_lets_requests_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(sqlite3.Error):
        SharedRateLimiter(tmp_path / "absent" / "store.sqlite3", 5)
    store = create_store(tmp_path)
    limiter = SharedRateLimiter(store, 1)
    limiter.hit("addr:a")
    with sqlite3.connect(store) as db:
        db.execute("DROP TABLE hits")  # the store broken under the running server
    with caplog.at_level(logging.ERROR, logger="mtserve.api"):
        limiter.hit("addr:a")
        limiter.hit("addr:a")
    assert caplog.text.count("shared rate-limit store failed") == 1
