"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.schemas import FilesDir, Health, Readiness
from service.api.state import StateDep

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="The process is alive; the state of the files directory")
async def health(state: StateDep) -> Health:
    files = state.files.health()
    return Health(
        status="ok", files=FilesDir(directory=files.directory, state=files.state, free_bytes=files.free_bytes)
    )


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="The model is loaded and warmed up, and the service is not draining",
)
async def ready(state: StateDep) -> JSONResponse:
    status: Literal["ready", "loading", "draining"] = (
        "draining" if state.draining else "ready" if state.ready else "loading"
    )
    body = Readiness(status=status, model=state.model_name, sha=state.model_sha)
    return JSONResponse(body.model_dump(), status_code=200 if status == "ready" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})  # fmt: skip
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
