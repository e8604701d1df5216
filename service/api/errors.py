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


async def guarded(request: Request, work: Awaitable[T]) -> T:
    """Await model work; map scheduler outcomes to HTTP errors; abandon it if the client leaves.

    The client's departure is awaited as an event rather than polled: under load, polling
    every waiting request costs the event loop more than the requests themselves.
    """
    task = asyncio.ensure_future(work)
    leaves = asyncio.ensure_future(_client_leaves(request))
    try:
        done, _ = await asyncio.wait({task, leaves}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ApiError(CLIENT_CLOSED_REQUEST, "Client closed the request")
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
        for pending in (task, leaves):
            if not pending.done():
                pending.cancel()
