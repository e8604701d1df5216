"""Request ids, model headers, the body-size limit and HTTP metrics, as one pure ASGI middleware."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import clients, logs
from service.api.errors import error_response
from service.api.metrics import Metrics

_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        model_sha: Callable[[], str],
        max_body_bytes: int,
        max_file_bytes: int,
        file_paths: frozenset[str] = frozenset({"/translate_file"}),
    ) -> None:
        self.app, self.metrics, self.model_sha = app, metrics, model_sha
        self.max_body, self.max_file, self.file_paths = max_body_bytes, max_file_bytes, file_paths

    def _limit(self, scope: Scope) -> tuple[int, str]:
        """The route's body limit and the words naming it."""
        if scope.get("path") in self.file_paths:
            return self.max_file, f"file size limit ({self.max_file} bytes, MTSERVE_MAX_FILE_BYTES)"
        return self.max_body, f"request size limit ({self.max_body} bytes, MTSERVE_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        rid = incoming if _SAFE_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = logs.request_id.set(rid)
        peer = scope.get("client")
        connection = clients.connection.set(tuple(peer) if peer else None)
        extra = [(b"x-request-id", rid.encode()), (b"x-model-sha", self.model_sha().encode())]
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        received = 0
        limit, limit_text = self._limit(scope)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        self.metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                await self._too_large(scope, receive, send_with_headers, limit_text)
                return
            try:
                await self.app(scope, limited_receive, send_with_headers)
            except BodyTooLarge:
                if started:
                    raise
                await self._too_large(scope, receive, send_with_headers, limit_text)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            direction = str(scope.get("state", {}).get("direction", "none"))
            self.metrics.child(self.metrics.requests, route, f"{status // 100}xx", direction).inc()
            self.metrics.child(self.metrics.request_seconds, route, direction).observe(time.perf_counter() - t0)
            logs.request_id.reset(token)
            clients.connection.reset(connection)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: str) -> None:
        response = error_response(413, f"Request body exceeds the {limit}")
        await response(scope, receive, send)
