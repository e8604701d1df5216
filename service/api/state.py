"""Everything the routes share, built once at start-up; routes get it through `StateDep`."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.api.access import KeyRing, RateLimiter
from service.api.detect import Detector
from service.api.files import FileStore
from service.api.metrics import Metrics
from service.api.scheduler import Scheduler
from service.api.settings import Settings
from service.api.translation import TranslationService
from service.languages import ModelLanguages
from service.manifest import MANIFEST_FILE
from service.runtime.beam import DecodeOptions
from service.runtime.fill_mask import FillMask
from service.runtime.translator import Translator


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    translator: Translator
    languages: ModelLanguages
    fill_mask: FillMask
    detector: Detector
    scheduler: Scheduler
    translations: TranslationService
    keys: KeyRing
    rate_limiter: RateLimiter
    files: FileStore
    model_sha: str
    model_version: str
    model_name: str
    ready: bool = False
    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> ServiceState:
        """Load the model (hashes checked: a missing or corrupt file raises naming it) and its helpers."""
        translator = Translator.load(settings.model_dir, settings.intra_op_threads, settings.batch_tokens)
        manifest_bytes = (settings.model_dir / MANIFEST_FILE).read_bytes()
        sha = hashlib.sha256(manifest_bytes).hexdigest()[:16]
        scheduler = Scheduler(
            translator, metrics,
            # the budget bounds the memory of all running batches together
            batch_tokens=settings.batch_tokens // settings.batch_workers, queue_size=settings.queue_size,
            max_wait_s=settings.max_wait_ms / 1000,
            retry_after_s=settings.retry_after_s, workers=settings.batch_workers, fault_marker=settings.fault_marker,
        )  # fmt: skip
        version = f"{translator.model.manifest.precision}-opset{translator.model.manifest.opset}"
        name = settings.model_name or "mtserve-" + "-".join(translator.languages.codes)
        metrics.model_info.labels(name, version, sha).set(1)
        return cls(
            settings=settings,
            metrics=metrics,
            translator=translator,
            languages=translator.languages,
            fill_mask=FillMask.from_model(translator.model),
            detector=Detector(translator.languages.codes),
            scheduler=scheduler,
            translations=TranslationService(translator, scheduler),
            keys=KeyRing(settings.api_keys, settings.require_api_key),
            rate_limiter=RateLimiter(settings.req_limit),
            files=FileStore(),
            model_sha=sha,
            model_version=version,
            model_name=name,
        )

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    def default_options(self, n_best: int = 1) -> DecodeOptions:
        beam = max(self.settings.default_beam_size, n_best)
        return DecodeOptions(beam_size=beam, n_best=n_best)


async def get_state(request: Request) -> ServiceState:
    """Async on purpose: FastAPI runs a plain-function dependency in its thread pool, a thread hop
    on every request for an attribute lookup."""
    state: ServiceState = request.app.state.mt
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
