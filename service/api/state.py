"""Everything the routes share, built once at start-up; routes get it through `StateDep`."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Annotated

from fastapi import Depends, Request

from service.api.access import KeyRing, RateLimiter
from service.api.detect import Detector
from service.api.files import FileStore
from service.api.metrics import Metrics
from service.api.models import ModelSet, Requested
from service.api.scheduler import Scheduler
from service.api.settings import Settings
from service.api.translation import TranslationService
from service.languages import ModelLanguages
from service.runtime.glossary import Glossary, load_glossary_dir


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    models: ModelSet
    languages: ModelLanguages  # the union of the models' languages and directions
    detector: Detector
    scheduler: Scheduler
    translations: TranslationService
    keys: KeyRing
    rate_limiter: RateLimiter
    files: FileStore
    glossaries: dict[str, Glossary]
    model_sha: str
    model_version: str
    model_name: str
    ready: bool = False
    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> ServiceState:
        """Load the models (hashes checked: a missing or corrupt file raises naming it) and their helpers."""
        pivot = None if settings.pivot == "off" else settings.pivot
        models = ModelSet.load(
            settings.model_dirs, settings.intra_op_threads, settings.batch_tokens, settings.prefer,
            settings.low_memory, pivot,
        )  # fmt: skip
        if models.single and settings.model_name:
            models = ModelSet([replace(models.models[0], name=settings.model_name)], pivot=pivot)
        scheduler = Scheduler(
            {m.name: m.translator for m in models.models}, metrics,
            # the budget bounds the memory of all running batches together
            batch_tokens=settings.batch_tokens // settings.batch_workers, queue_size=settings.queue_size,
            max_wait_s=settings.max_wait_ms / 1000,
            retry_after_s=settings.retry_after_s, workers=settings.batch_workers, fault_marker=settings.fault_marker,
        )  # fmt: skip
        for model in models.models:
            metrics.model_info.labels(model.name, model.version, model.sha).set(1)
            metrics.model_memory.labels(model.name).set(model.resident_bytes)
        if models.single:
            sha, version = models.models[0].sha, models.models[0].version
        else:
            sha = hashlib.sha256("".join(m.sha for m in models.models).encode()).hexdigest()[:16]
            version = ",".join(m.version for m in models.models)
        return cls(
            settings=settings,
            metrics=metrics,
            models=models,
            languages=models.languages,
            detector=Detector(models.languages.codes),
            scheduler=scheduler,
            translations=TranslationService(
                models, scheduler, settings.default_beam_size, _guard(settings.repetition_guard), metrics
            ),
            keys=KeyRing(settings.api_keys, settings.require_api_key),
            rate_limiter=RateLimiter(settings.req_limit),
            files=FileStore(settings.files_dir, ttl_s=settings.file_ttl_s),
            glossaries=load_glossary_dir(settings.glossary_dir) if settings.glossary_dir else {},
            model_sha=sha,
            model_version=version,
            model_name=",".join(m.name for m in models.models),
        )

    def deadline(self, timeout_s: float | None = None) -> float:
        """When work started now must end: the request timeout, unless a route gives its own."""
        return time.monotonic() + (self.settings.request_timeout_s if timeout_s is None else timeout_s)

    def default_options(self, n_best: int = 1, glossary: Glossary | None = None) -> Requested:
        """A LibreTranslate request's alternatives and glossary; the rest is the serving model's default."""
        return Requested(n_best=n_best, glossary=glossary)


def _guard(setting: str) -> bool | None:
    """MTSERVE_REPETITION_GUARD as an override of every model's own rule; None: no override."""
    return {"on": True, "off": False}.get(setting)


async def get_state(request: Request) -> ServiceState:
    """Async on purpose: FastAPI runs a plain-function dependency in its thread pool, a thread hop
    on every request for an attribute lookup."""
    state: ServiceState = request.app.state.mt
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
