"""The connection the current request came on, as the scheduler tells its clients apart.

A client that sends its next request as soon as it is answered does so on the same connection
(HTTP/1.1 keep-alive), so the scheduler can tell the clients a batch answered coming back from
other requests arriving (service/api/scheduler.py). Set per request by the middleware; None
outside a request, or where the server names no peer (a Unix socket).
"""

from __future__ import annotations

import contextvars
from collections.abc import Hashable

connection: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar("connection", default=None)
