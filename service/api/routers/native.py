"""The native API: /v1/translate with full decoding control, /v1/fill-mask in Hugging Face's shape."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from service.api.access import admit, bearer_token
from service.api.errors import ApiError, guarded
from service.api.glossaries import resolve_glossary_off_loop
from service.api.models import Requested
from service.api.residency import ModelUnavailable
from service.api.schemas import (
    DetectedLanguage,
    FillMaskRequest,
    FillMaskResponse,
    Hypothesis,
    TextResult,
    TranslateRequest,
    TranslateResponse,
    error_responses,
)
from service.api.state import ServiceState, StateDep
from service.languages import ModelLanguages, UnsupportedDirection
from service.runtime.fill_mask import FillMaskError
from service.textnorm import scrub

router = APIRouter(prefix="/v1", tags=["native"])


def _check_direction(languages: ModelLanguages, source: str, target: str) -> None:
    try:
        languages.check(source, target)
    except UnsupportedDirection as exc:
        raise ApiError(400, f"source, target: {exc}") from None


def _access(request: Request, state: ServiceState) -> None:
    admit(request, state.keys, state.rate_limiter, bearer_token(request), missing_status=401)


@router.post(
    "/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 413, 422, 429, 500, 503, 504),
)
async def translate(body: TranslateRequest, request: Request, state: StateDep) -> TranslateResponse:
    _access(request, state)
    settings = state.settings
    if settings.batch_limit != -1 and len(body.texts) > settings.batch_limit:
        raise ApiError(422, f"texts: {len(body.texts)} texts exceed the limit of {settings.batch_limit} per request")
    for i, text in enumerate(body.texts):
        if settings.char_limit != -1 and len(text) > settings.char_limit:
            raise ApiError(422, f"texts[{i}]: {len(text)} characters exceed the limit of {settings.char_limit}")
    languages = state.languages
    for name, code in (("source", body.source), ("target", body.target)):
        if not (languages.has(code) or (name == "source" and code == "auto")):
            raise ApiError(
                422, f"{name}: {code!r} is not a language of this model; it has {', '.join(languages.codes)}"
            )
    if body.source != "auto" and body.source != body.target:
        _check_direction(languages, body.source, body.target)
    if body.beam_size is not None and body.num_hypotheses > body.beam_size:
        raise ApiError(422, f"num_hypotheses: {body.num_hypotheses} is more than beam_size ({body.beam_size})")
    options = Requested(
        n_best=body.num_hypotheses,
        beam_size=body.beam_size,
        length_penalty=body.length_penalty,
        max_length=body.max_length,
        repetition_guard=body.repetition_guard,
        glossary=await resolve_glossary_off_loop(
            body.glossary if isinstance(body.glossary, str) or body.glossary is None
            else [e.model_dump() for e in body.glossary],
            state.glossaries, status=422,
        ),
    )  # fmt: skip
    texts = [scrub(t) for t in body.texts]
    detected: list[DetectedLanguage | None] = [None] * len(texts)
    if body.source == "auto":
        found = await asyncio.to_thread(lambda: [state.detector.best(t) for t in texts])
        detected = [DetectedLanguage(confidence=d.confidence, language=d.language) for d in found]
        sources = [d.source_for(body.target) for d in found]
        for source in dict.fromkeys(sources):
            if source != body.target:
                _check_direction(languages, source, body.target)
    else:
        sources = [body.source] * len(texts)
    request.state.direction = f"{body.source}-{body.target}"
    results = await guarded(
        request, state.translations.translate(texts, sources, body.target, options, state.deadline())
    )
    scores = body.return_scores
    return TranslateResponse(
        model=state.model_name,
        translations=[
            TextResult(
                text=r.text,
                score=r.score if scores else None,
                quality=r.quality,
                alternatives=[Hypothesis(text=a.text, score=a.score if scores else None) for a in r.alternatives],
                source_tokens=r.source_tokens,
                target_tokens=r.target_tokens,
                detected_language=d,
            )
            for r, d in zip(results, detected, strict=True)
        ],
    )


@router.post(
    "/fill-mask",
    response_model=FillMaskResponse,
    responses=error_responses(400, 401, 403, 413, 422, 429, 500, 503),
)
async def fill_mask(body: FillMaskRequest, request: Request, state: StateDep) -> Any:
    """One list of candidates for a single mask, one list per mask for several (the pipeline's shape)."""
    _access(request, state)
    if state.settings.char_limit != -1 and len(body.text) > state.settings.char_limit:
        raise ApiError(422, f"text: {len(body.text)} characters exceed the limit of {state.settings.char_limit}")
    models = state.models
    if body.language is not None and not state.languages.has(body.language):
        raise ApiError(422, f"language: {body.language!r} is not a language of this service")
    entry = models.fill_model(body.language)
    if entry is None:
        offered = models.fill_languages()
        if body.language is None:
            problem = "none of the loaded models has a masked-LM head (imported models have none)"
        else:
            problem = (
                f"{body.language} is served only by models without a masked-LM head (imported models have none); "
                f"fill-mask covers {', '.join(offered)}"
            )
        raise ApiError(400, f"language: {problem}")
    text = scrub(body.text)
    try:
        async with state.residency.use(entry.name, state.deadline()) as served:
            assert served.fill_mask is not None  # the manifest has a masked-LM head
            rows = await state.scheduler.run_in_worker(served.fill_mask.fill, text, body.top_k, body.targets)
    except FillMaskError as exc:
        raise ApiError(422, f"{exc.field}: {exc}") from None
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
    out = [[c.as_dict() for c in row] for row in rows]
    return out[0] if len(out) == 1 else out
