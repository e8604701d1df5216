"""The HTTP connection's own limits, below the app: a deadline for a request's headers and a cap on
open connections, answered with 503 and Retry-After.

uvicorn's keep-alive timer only runs between requests, so a client that connects and sends
nothing, or sends its headers a byte at a time, would hold its connection for ever. Each
connection here gets `header_timeout_s` to deliver a request's headers, from the moment it
opens or from the first byte of a new request on a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api import clients

REQUEST_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _too_many_connections(limit: int, retry_after_s: int) -> Any:
    body = json.dumps({"error": f"Too many open connections (MTSERVE_MAX_CONNECTIONS={limit}); retry later"}).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after_s).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def guarded_protocol(header_timeout_s: float, max_connections: int, retry_after_s: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a header deadline and a connection cap."""
    over_limit_app = _too_many_connections(max_connections, retry_after_s)

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_deadline: TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)
            if self.client:
                clients.closed(tuple(self.client))

        def data_received(self, data: bytes) -> None:
            if self._header_deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_header_deadline()  # the first bytes of a new request on a kept-alive connection
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            if len(self.connections) <= max_connections:
                super().on_headers_complete()
                return
            own_app = self.app
            self.app = over_limit_app  # uvicorn reads self.app once, as it builds the request cycle
            try:
                super().on_headers_complete()
            finally:
                self.app = own_app

        def _arm_header_deadline(self) -> None:
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _cancel_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            if self.scope is not None and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(REQUEST_TIMEOUT_408)  # part of a request came: say why it ends
            self.transport.close()

    return GuardedHttpProtocol
