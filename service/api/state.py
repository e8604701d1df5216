"""Everything the routes share, built once at start-up; routes get it through `StateDep`."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.api.access import KeyRing, Limiter
from service.api.detect import Detector
from service.api.files import FileStore
from service.api.metrics import Metrics
from service.api.models import ModelSet, Requested, load_model, read_installed
from service.api.residency import Residency
from service.api.scheduler import Scheduler
from service.api.settings import Settings
from service.api.shared_limits import limiter_for
from service.api.translation import TranslationService
from service.languages import ModelLanguages
from service.runtime.beam import guard_override
from service.runtime.glossary import Glossary, load_glossary_dir


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    models: ModelSet
    residency: Residency  # which models are in memory
    languages: ModelLanguages  # the union of the models' languages and directions
    detector: Detector
    scheduler: Scheduler
    translations: TranslationService
    keys: KeyRing
    rate_limiter: Limiter
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
        """Read the installed models' manifests and check that they can be served together, and build
        their helpers; `residency.start()` then loads them (all, or the preloaded ones)."""
        pivot = None if settings.pivot == "off" else settings.pivot
        # manifests only: `mtserve serve` checked every file's hash before the app started, and each
        # model checks its own again as it loads
        entries = read_installed(settings.model_dirs, settings.prefer, verify=False, single_name=settings.model_name)
        models = ModelSet(entries, settings.prefer, pivot)
        scheduler = Scheduler(
            {}, metrics,  # the residency adds each model's translator as it loads
            # the budget bounds the memory of all running batches together
            batch_tokens=settings.batch_tokens // settings.batch_workers, queue_size=settings.queue_size,
            max_wait_s=settings.max_wait_ms / 1000,
            retry_after_s=settings.retry_after_s, workers=settings.batch_workers, fault_marker=settings.fault_marker,
        )  # fmt: skip
        threads, batch_tokens, low_memory = settings.intra_op_threads, settings.batch_tokens, settings.low_memory
        packed_root = settings.packed_root
        residency = Residency(
            models, lambda entry: load_model(entry, threads, batch_tokens, low_memory, packed_root), scheduler, metrics,
            settings.memory_budget, settings.preload, settings.retry_after_s, packed_root is not None,
        )  # fmt: skip
        for entry in models.entries:
            metrics.model_info.labels(entry.name, entry.version, entry.sha).set(1)
        if models.single:
            sha, version = models.entries[0].sha, models.entries[0].version
        else:
            sha = hashlib.sha256("".join(e.sha for e in models.entries).encode()).hexdigest()[:16]
            version = ",".join(e.version for e in models.entries)
        return cls(
            settings=settings,
            metrics=metrics,
            models=models,
            residency=residency,
            languages=models.languages,
            detector=Detector(models.languages.codes),
            scheduler=scheduler,
            translations=TranslationService(
                models,
                residency,
                scheduler,
                settings.default_beam_size,
                guard_override(settings.repetition_guard),
                metrics,
            ),
            keys=KeyRing(settings.api_keys, settings.require_api_key),
            rate_limiter=limiter_for(settings.req_limit, settings.processes),
            files=FileStore(
                settings.files_dir, settings.files_per_process, settings.file_ttl_s, shared=settings.processes > 1
            ),
            glossaries=load_glossary_dir(settings.glossary_dir) if settings.glossary_dir else {},
            model_sha=sha,
            model_version=version,
            model_name=",".join(e.name for e in models.entries),
        )

    def deadline(self, timeout_s: float | None = None) -> float:
        """When work started now must end: the request timeout, unless a route gives its own."""
        return time.monotonic() + (self.settings.request_timeout_s if timeout_s is None else timeout_s)

    def default_options(self, n_best: int = 1, glossary: Glossary | None = None) -> Requested:
        """A LibreTranslate request's alternatives and glossary; the rest is the serving model's default."""
        return Requested(n_best=n_best, glossary=glossary)


async def get_state(request: Request) -> ServiceState:
    """Async on purpose: FastAPI runs a plain-function dependency in its thread pool, a thread hop
    on every request for an attribute lookup."""
    state: ServiceState = request.app.state.mt
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
