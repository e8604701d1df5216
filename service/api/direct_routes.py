"""Hot endpoints served by Starlette's own route, ahead of FastAPI's.

An endpoint that reads its request itself (no parameter FastAPI parses, the state its only
dependency) does the same work under a plain Starlette `Route`. FastAPI's route for it costs about
0.07 ms more a request in the server: its router matches the path against the included routes in
turn, then solves the dependencies; that is a tenth of what a one-sentence request spends outside
its search (docs/BENCHMARKS.md). The plain route goes first in the app's routes with the declared
route's path and methods. The declaration stays behind it for the OpenAPI schema, and any other
method still gets its 405 there. Errors raised in the endpoint reach the app's exception handlers
as before, and the declared route is still the request's `route`, which the metrics label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from service.api.state import ServiceState

StateEndpoint = Callable[[Request, ServiceState], Awaitable[Response]]


class _OwnMethodsRoute(Route):
    """A route that takes only its own methods and passes over every other request: the declared
    route behind it answers those (405 with its Allow header, counted under its path)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        return (Match.NONE, {}) if match is Match.PARTIAL else (match, child_scope)


def serve_first(app: FastAPI, router: APIRouter, endpoint: StateEndpoint) -> None:
    """`endpoint(request, state)`, declared in `router` (already included in `app`), served before
    any other route."""
    declared = [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint]
    if len(declared) != 1:
        raise ValueError(f"{endpoint.__name__} is declared {len(declared)} times in its router, not once")
    route = declared[0]

    async def direct(request: Request) -> Response:
        request.scope["route"] = route  # what FastAPI's router would have set, the metrics' label
        state: ServiceState = request.app.state.mt
        return await endpoint(request, state)

    app.router.routes.insert(
        0, _OwnMethodsRoute(route.path, direct, methods=sorted(route.methods or ()), include_in_schema=False)
    )
