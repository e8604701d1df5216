"""Errors as LibreTranslate sends them: a JSON body `{"error": "..."}` and a status code."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.residency import ModelUnavailable
from service.api.scheduler import DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown

log = logging.getLogger("mtserve.api")
T = TypeVar("T")
# Not a registered status; nginx's convention for "the client closed the request".
CLIENT_CLOSED_REQUEST = 499


class ErrorBody(BaseModel):
    error: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_message(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            problems.append("Invalid JSON format")
        else:
            problems.append(f"{_field(loc)}: {err.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(problems)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, validation_message(exc))


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:16]
    log.error("unhandled error error_id=%s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(500, f"Internal error (error id {error_id})")


async def _client_leaves(request: Request) -> None:
    """Returns when the server reports the client gone (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Departure:
    """Cancels the request's task when the watch on its client ends first (the client left, or the
    server could no longer tell), unless the work is over by then."""

    def __init__(self, request_task: asyncio.Task[object]) -> None:
        self.request_task = request_task
        self.gone = False
        self.over = False

    def watch_ended(self, leaves: asyncio.Future[None]) -> None:
        if self.over or leaves.cancelled():
            return
        leaves.exception()  # taken either way: the client cannot be answered
        self.gone = True
        self.request_task.cancel()


async def guarded(request: Request, work: Awaitable[T]) -> T:
    """Await model work; map scheduler outcomes to HTTP errors; abandon it if the client leaves.

    The client's departure is awaited as an event rather than polled: under load, polling
    every waiting request costs the event loop more than the requests themselves. The work runs
    in the request's own task, which the watch cancels if the client leaves first: one task a
    request, where a task of its own for the work and `asyncio.wait` over both cost a sixth of a
    one-sentence request's Python (docs/BENCHMARKS.md).
    """
    request_task = asyncio.current_task()
    assert request_task is not None  # a route runs in its request's task
    departure = _Departure(request_task)
    leaves = asyncio.ensure_future(_client_leaves(request))
    leaves.add_done_callback(departure.watch_ended)
    try:
        return await work
    except asyncio.CancelledError:
        if not departure.gone:
            raise
        request_task.uncancel()
        raise ApiError(CLIENT_CLOSED_REQUEST, "Client closed the request") from None
    except Overloaded as exc:
        raise ApiError(503, "Service overloaded: the translation queue is full; retry later",
                       {"Retry-After": str(exc.retry_after)}) from None  # fmt: skip
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except ShuttingDown:
        raise ApiError(503, "Service is shutting down; retry on another replica", {"Retry-After": "1"}) from None
    except DeadlineExceeded:
        raise ApiError(504, "Translation did not finish within the request timeout") from None
    except InferenceFailed as exc:
        raise ApiError(500, f"Translation failed (error id {exc.error_id})") from None
    finally:
        departure.over = True
        leaves.cancel()
