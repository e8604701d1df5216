"""The connection the current request came on, as the scheduler tells its clients apart.

A client that sends its next request as soon as it is answered does so on the same connection
(HTTP/1.1 keep-alive), so the scheduler can tell the clients a batch answered coming back from
other requests arriving (service/api/scheduler.py). Set per request by the middleware; None
outside a request, or where the server names no peer (a Unix socket). The server says when a
connection closes (`closed`), so that a client that opens a new connection for each request is
still told apart from a second client.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Hashable

connection: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar("connection", default=None)

_close_listeners: list[Callable[[Hashable], None]] = []


def when_closed(listener: Callable[[Hashable], None]) -> Callable[[], None]:
    """Calls `listener(peer)` as each connection closes, with the peer requests on it carried in
    `connection`, until the function returned is called."""
    _close_listeners.append(listener)

    def stop() -> None:
        if listener in _close_listeners:
            _close_listeners.remove(listener)

    return stop


def closed(peer: Hashable) -> None:
    """A connection closed (service/api/connections.py): a client that sends nothing more on it."""
    for listener in list(_close_listeners):
        listener(peer)
