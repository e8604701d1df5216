"""The per-client rate limit counted across every server process (MTSERVE_PROCESSES above one).

Each process's limiter opens one SQLite database, which the parent creates in its run directory
before the processes start (`create_store`): a table of hits, each a client and a time on the
machine's monotonic clock (the same clock in every process). A request's check reads and writes
in one immediate transaction, so that two processes cannot both admit a client's last request of
a window. A store that fails while the server runs lets requests through and logs why, at most
once a minute: a broken limit must not stop the service.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.api.access import WINDOW_S, Limiter, RateLimiter, slowdown

log = logging.getLogger("mtserve.api")
# Set by the parent of several server processes: the store its children share.
SHARED_LIMITS_VARIABLE = "MTSERVE_SHARED_RATE_LIMITS"
STORE_NAME = "rate-limits.sqlite3"
# Another process's transaction takes microseconds; this long a wait means something is wrong.
BUSY_TIMEOUT_S = 2.0
# Each process removes every client's expired hits once in this many of its own requests.
PRUNE_EVERY = 512
REPORT_EVERY_S = 60.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS hits (client TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS hits_by_client ON hits (client, at)",
    "CREATE INDEX IF NOT EXISTS hits_by_time ON hits (at)",
)


def _connect(path: Path) -> sqlite3.Connection:
    # autocommit (isolation_level None): each check opens its own immediate transaction
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=OFF")  # the hits of a minute need no durability
    return db


def create_store(directory: Path) -> Path:
    """The store for the processes about to start, in `directory`: its path."""
    path = directory / STORE_NAME
    db = _connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # kept by the file: readers never wait for a writer
        for statement in _SCHEMA:
            db.execute(statement)
    finally:
        db.close()
    return path


class SharedRateLimiter:
    """A sliding one-minute window per client, as RateLimiter, in a store every process counts in."""

    def __init__(self, path: Path, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._db = _connect(path)
        self._db.execute("SELECT COUNT(*) FROM hits WHERE at < 0").fetchone()  # a missing store fails at start
        self._lock = threading.Lock()
        self._since_prune = 0
        self._reported = -REPORT_EVERY_S

    def hit(self, client: str) -> None:
        if self.per_minute <= 0:
            return
        now = self._clock()
        try:
            with self._lock:
                first_hit = self._count(client, now)
        except sqlite3.Error as exc:
            if now - self._reported >= REPORT_EVERY_S:
                self._reported = now
                log.error("the shared rate-limit store failed (%s): requests pass unlimited until it recovers", exc)
            return
        if first_hit is not None:
            raise slowdown(self.per_minute, first_hit, now)

    def _count(self, client: str, now: float) -> float | None:
        """Adds the hit unless the client is at its limit; then the time of its oldest hit in the window."""
        db, expired = self._db, now - WINDOW_S
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM hits WHERE client = ? AND at <= ?", (client, expired))
            count, first_hit = db.execute("SELECT COUNT(*), MIN(at) FROM hits WHERE client = ?", (client,)).fetchone()
            over = count >= self.per_minute
            if not over:
                db.execute("INSERT INTO hits (client, at) VALUES (?, ?)", (client, now))
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:  # clients that left: their hits would stay for ever
                self._since_prune = 0
                db.execute("DELETE FROM hits WHERE at <= ?", (expired,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return float(first_hit) if over else None


def limiter_for(per_minute: int, processes: int) -> Limiter:
    """The shared store's limiter in a process of several (the parent names the store), else one
    of this process's own."""
    store = os.environ.get(SHARED_LIMITS_VARIABLE)
    if per_minute > 0 and processes > 1 and store:
        return SharedRateLimiter(Path(store), per_minute)
    return RateLimiter(per_minute)
