"""API keys (constant-time comparison, never logged) and per-client request rate limits."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque
from typing import Protocol

from fastapi import Request
from pydantic import SecretStr

from service.api.errors import ApiError


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyRing:
    def __init__(self, keys: list[SecretStr], required: bool) -> None:
        self._keys = [k.get_secret_value().encode() for k in keys]
        self.enabled = bool(self._keys)
        self.required = required and self.enabled

    def valid(self, key: str) -> bool:
        """Compares against every key, always, so timing says nothing about which or how much matched."""
        candidate = key.encode("utf-8", "surrogatepass")
        found = False
        for known in self._keys:
            found |= hmac.compare_digest(candidate, known)
        return found

    def check(self, key: str | None, *, missing_status: int = 400) -> None:
        """LibreTranslate's rules: a wrong key is 403; a missing one, where keys are required, 400."""
        if not self.enabled:
            return
        if key:
            if not self.valid(key):
                raise ApiError(403, "Invalid API key")
        elif self.required:
            raise ApiError(
                missing_status,
                "Please contact the server operator to get an API key (send it as api_key or Authorization: Bearer)",
                {"WWW-Authenticate": "Bearer"} if missing_status == 401 else None,
            )


class Limiter(Protocol):
    per_minute: int

    def hit(self, client: str) -> None:
        """Counts one request of `client`; raises a 429 ApiError where it is over the limit."""


WINDOW_S = 60.0


def slowdown(per_minute: int, first_hit: float, now: float) -> ApiError:
    """The 429 for a client whose oldest hit in the window came at `first_hit`: Retry-After says when it leaves."""
    retry = max(1, int(first_hit + WINDOW_S - now + 1))
    return ApiError(
        429, f"Slowdown: {per_minute} per 1 minute (request limit MTSERVE_REQ_LIMIT)", {"Retry-After": str(retry)}
    )


class RateLimiter:
    """A sliding one-minute window per client (`client_id`), in this process's memory."""

    def __init__(self, per_minute: int, max_clients: int = 100_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, client: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > self.max_clients:  # bound memory under address churn
                self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > now - WINDOW_S}
            hits = self._hits.setdefault(client, deque())
            while hits and hits[0] <= now - WINDOW_S:
                hits.popleft()
            if len(hits) >= self.per_minute:
                raise slowdown(self.per_minute, hits[0], now)
            hits.append(now)


def client_id(request: Request, keys: KeyRing, api_key: str | None) -> str:
    """Whom a request counts against: its key where the server has keys (`KeyRing.check` has
    refused a wrong one), else its address. A key the server does not know names nobody: counted
    by it, each made-up key would open a window of its own. The key enters the limiter's store
    only as a digest."""
    if api_key and keys.enabled:
        return "key:" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()
    return "addr:" + (request.client.host if request.client else "unknown")


def admit(request: Request, keys: KeyRing, limiter: Limiter, api_key: str | None, *, missing_status: int = 400) -> None:
    """The key checked, then the request counted against its client's window."""
    keys.check(api_key, missing_status=missing_status)
    limiter.hit(client_id(request, keys, api_key))
