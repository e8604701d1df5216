"""The FastAPI app: settings in, routes, middleware, start-up (load, warm up) and drain."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import errors
from service.api.direct_routes import serve_first
from service.api.heap import freeze_long_lived, thaw
from service.api.metrics import Metrics
from service.api.middleware import RequestContextMiddleware
from service.api.routers import libretranslate, native, ops, web
from service.api.settings import Settings
from service.api.state import ServiceState

log = logging.getLogger("mtserve.app")
WARM_UP_TEXT = "Warm up, one two three."
WARM_UP_FILL = "Warm <mask> one two three."


async def warm_up(state: ServiceState) -> None:
    """A translation into each target language through the scheduler, one fill and one detection,
    before /ready. What the text means does not matter: it runs every graph once."""
    loaded = {model.name for model in state.residency.loaded()}
    for (source, target), entry in state.models.by_direction.items():
        if entry.name in loaded:  # with a memory budget, the others warm up on their first request
            options = state.default_options()
            await state.translations.translate([WARM_UP_TEXT], [source], target, options, state.deadline())
    for model in state.residency.loaded():
        if model.fill_mask is not None:
            await state.scheduler.run_in_worker(model.fill_mask.fill, WARM_UP_FILL, 1, None)
    state.detector.warm_up()


def create_app(settings: Settings | None = None, start_gate: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    """`start_gate`: awaited once the models are warm, before the app counts itself ready (a server
    of several processes waits there for the others)."""
    settings = settings or Settings()
    metrics = Metrics()
    holder: dict[str, ServiceState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        t0 = time.perf_counter()
        state = ServiceState.load(settings, metrics)
        app.state.mt = holder["state"] = state
        state.scheduler.start()
        await state.residency.start()
        await warm_up(state)
        if start_gate is not None:
            await start_gate()
        freeze_long_lived()
        state.ready = True
        log.info(
            "ready in %.2f s: model %s (sha %s), %d batch workers, %d intra-op threads, batch budget %d tokens",
            time.perf_counter() - t0, state.model_name, state.model_sha, settings.batch_workers,
            settings.intra_op_threads, settings.batch_tokens,
        )  # fmt: skip
        try:
            yield
        finally:
            state.draining, state.ready = True, False
            finished = await state.scheduler.drain(settings.drain_s)
            if not finished:
                log.warning("drain period (%.0f s) ended with work still queued", settings.drain_s)
            await state.scheduler.stop()
            state.files.close()
            thaw()

    app = FastAPI(
        title="mtserve",
        summary="Machine translation and masked-word fill, LibreTranslate-compatible.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(errors.ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)
    for module in (native, libretranslate, ops, web):  # matched in this order: the busiest first
        app.include_router(module.router)
    serve_first(app, libretranslate.router, libretranslate.translate)  # LibreTranslate clients' one request
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID", "X-Model-SHA", "Retry-After"],
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        model_sha=lambda: holder["state"].model_sha if "state" in holder else "loading",
        max_body_bytes=settings.max_body_bytes,
        max_file_bytes=settings.max_file_bytes,
    )
    return app
