"""LibreTranslate-compatible routes: existing clients and plugins work unchanged.

Status codes and messages follow LibreTranslate's own app: 400 for a missing or bad field,
403 for a wrong API key, 429 for the rate limit, `{"error": "..."}` bodies.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.access import admit
from service.api.detect import Detection
from service.api.documents import (
    FORMATS,
    MEDIA_TYPES,
    Document,
    DocumentError,
    document_format,
    translated_name,
)
from service.api.errors import ApiError, guarded
from service.api.files import FilesDirError
from service.api.glossaries import resolve_glossary_off_loop
from service.api.lt_spec import libretranslate_spec
from service.api.markup import HtmlDocument, TextLimitExceeded
from service.api.params import Params, read_params
from service.api.schemas import (
    LtDetectRequest,
    LtFrontendSettings,
    LtLanguage,
    LtTranslateFileResponse,
    LtTranslateRequest,
    LtTranslateResponse,
    error_responses,
)
from service.api.state import ServiceState, StateDep
from service.api.translation import off_loop_if_long
from service.languages import ModelLanguages, language_name
from service.runtime.glossary import Glossary
from service.textnorm import scrub

router = APIRouter(tags=["LibreTranslate"])
SUPPORTED_FILE_FORMATS = list(FORMATS)


def _body_doc(model: type[Any], form: bool = True, multipart: bool = False) -> dict[str, Any]:
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if form:
        content["application/x-www-form-urlencoded"] = {"schema": schema}
    if multipart:
        content["multipart/form-data"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}


def _access(request: Request, state: ServiceState, params: Params) -> None:
    admit(request, state.keys, state.rate_limiter, params.api_key)


def _required_text(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise ApiError(400, f"Invalid request: missing {name} parameter")
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid request: {name} parameter must be a string")
    return value


# LibreTranslate's public codes for its model codes (libretranslate/language.py), and the variants
# it falls back to when a code itself is not installed.
LT_ALIASES: dict[str, str] = {"pt-br": "pb", "zh-hans": "zh", "zh-hant": "zt"}
# Argos codes as LibreTranslate shows them in /languages (its model2iso); requests may use either
LT_EXPOSED: dict[str, str] = {"pb": "pt-BR", "zh": "zh-Hans", "zt": "zh-Hant"}
LT_VARIANTS: dict[str, tuple[str, ...]] = {"pt": ("pb",), "pb": ("pt",), "zh": ("zt",), "zt": ("zh",)}


def _language(languages: ModelLanguages, code: str, *, allow_auto: bool) -> str:
    """The model's code for a LibreTranslate code: case-insensitive, with LibreTranslate's aliases
    and variant fallbacks where they name a language the service has."""
    lowered = code.lower()
    if allow_auto and lowered == "auto":
        return "auto"
    mapped = LT_ALIASES.get(lowered, lowered)
    candidates: list[str] = [lowered, mapped, *LT_VARIANTS.get(mapped, ())]
    for candidate in candidates:
        if languages.has(candidate):
            return candidate
    raise ApiError(400, f"{mapped} is not supported")


def _check_directions(languages: ModelLanguages, sources: list[str], target: str) -> None:
    """LibreTranslate's 400 for a pair of known languages that no model translates."""
    for source in dict.fromkeys(sources):
        if source != target and (source, target) not in languages.directions:
            raise ApiError(
                400,
                f"{language_name(target)} ({target}) is not available as a target language from "
                f"{language_name(source)} ({source})",
            )


def _q(params: Params) -> tuple[list[str], bool]:
    """`q` as a list of strings, and whether it came as a list."""
    q = params.get("q")
    if q is None or q == "" or q == []:
        raise ApiError(400, "Invalid request: missing q parameter")
    batch = isinstance(q, list)
    texts = q if batch else [q]
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "Invalid request: q parameter must be a string or a list of strings")
    return texts, batch


def _texts(params: Params, state: ServiceState) -> tuple[list[str], bool]:
    texts, batch = _q(params)
    limit = state.settings.batch_limit
    if batch and limit != -1 and len(texts) > limit:
        raise ApiError(
            400, f"Invalid request: request ({len(texts)}) exceeds text limit ({limit}): q has too many texts"
        )
    char_limit = state.settings.char_limit
    for i, text in enumerate(texts):
        if char_limit != -1 and len(text) > char_limit:
            where = f"q[{i}]" if batch else "q"
            raise ApiError(
                400, f"Invalid request: request ({len(text)}) exceeds text limit ({char_limit}): {where} is too long"
            )
    return [scrub(t) for t in texts], batch


def _alternatives(params: Params, state: ServiceState) -> int:
    raw = params.get("alternatives")
    if raw is None or raw == "":
        return 0
    try:
        count = max(0, int(raw))
    except (TypeError, ValueError):
        raise ApiError(400, "Invalid request: alternatives parameter is not a number") from None
    if count > state.settings.alternatives_limit:
        raise ApiError(400, f"Invalid request: alternatives parameter must be <= {state.settings.alternatives_limit}")
    return count


async def _detect_all(state: ServiceState, texts: list[str]) -> list[Detection]:
    return await asyncio.to_thread(lambda: [state.detector.best(t) for t in texts])


@router.post(
    "/translate",
    response_model=LtTranslateResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 403, 413, 429, 500, 503, 504),
    openapi_extra=_body_doc(LtTranslateRequest, multipart=True),
    summary="Translate text (LibreTranslate)",
)
async def translate(request: Request, state: StateDep) -> JSONResponse:
    params = await read_params(request)
    _access(request, state, params)
    texts, batch = _texts(params, state)
    languages = state.languages
    source = _language(languages, _required_text(params, "source"), allow_auto=True)
    target = _language(languages, _required_text(params, "target"), allow_auto=False)
    text_format = params.get("format") or "text"
    if text_format not in ("text", "html"):
        raise ApiError(400, f"{text_format} format is not supported")
    alternatives = _alternatives(params, state)
    glossary = await resolve_glossary_off_loop(params.get("glossary"), state.glossaries)

    if source != "auto":
        _check_directions(languages, [source], target)
    detected = await _detect_all(state, texts) if source == "auto" else None
    sources = [d.source_for(target) for d in detected] if detected else [source] * len(texts)
    _check_directions(languages, sources, target)
    request.state.direction = f"{source}-{target}" if source != "auto" else f"auto-{target}"
    if text_format == "html":
        translated = await _translate_html(request, state, texts, batch, sources, target, glossary)
        alts: list[list[str]] = [[] for _ in texts]
    else:
        options = state.default_options(n_best=alternatives + 1, glossary=glossary)
        results = await guarded(
            request, state.translations.translate(texts, sources, target, options, state.deadline())
        )
        translated = [r.text for r in results]
        alts = [[a.text for a in r.alternatives] for r in results]

    body: dict[str, Any] = {"translatedText": translated if batch else translated[0]}
    if alternatives > 0:
        body["alternatives"] = alts if batch else alts[0]
    if detected is not None:
        body["detectedLanguage"] = [d.as_dict() for d in detected] if batch else detected[0].as_dict()
    return JSONResponse(body)


# What a text's HTML may give to translate (each block's text and each element's own text, which
# places the element in the block's translation), in character limits: an element's text counts
# again for each element around it, so HTML nested 555 deep in 5,000 characters gave 310,246 to
# translate. A paragraph inside a link, bold and italic at once gives 4.
HTML_PIECES_PER_LIMIT = 4


def _html_texts(documents: list[HtmlDocument], batch: bool, char_limit: int) -> list[list[str]]:
    """Each document's texts, at most HTML_PIECES_PER_LIMIT character limits of them (400 past that)."""
    limit = None if char_limit == -1 else HTML_PIECES_PER_LIMIT * char_limit
    pieces = []
    for i, document in enumerate(documents):
        try:
            pieces.append(document.texts(limit))
        except TextLimitExceeded as exc:
            where = f"q[{i}]" if batch else "q"
            raise ApiError(
                400,
                f"Invalid request: request ({exc.characters}) exceeds text limit ({limit}): {where} nests its "
                "HTML elements so deep that its texts and its elements' own texts come to more than "
                f"{HTML_PIECES_PER_LIMIT} times the character limit",
            ) from None
    return pieces


async def _translate_html(
    request: Request,
    state: ServiceState,
    texts: list[str],
    batch: bool,
    sources: list[str],
    target: str,
    glossary: Glossary | None,
) -> list[str]:
    """Each HTML text with its text translated and its markup kept. Every text's pieces go in one
    call, so that they share the scheduler's batches: one text at a time, a request of many
    waited for each in turn. Long texts are read and rebuilt in a worker thread."""
    characters = sum(len(text) for text in texts)
    documents = await off_loop_if_long(characters, lambda: [HtmlDocument(text) for text in texts])
    pieces = await off_loop_if_long(characters, lambda: _html_texts(documents, batch, state.settings.char_limit))
    flat = [piece for own in pieces for piece in own]
    if not flat:
        return list(texts)
    flat_sources = [source for own, source in zip(pieces, sources, strict=True) for _ in own]
    options = state.default_options(glossary=glossary)
    results = await guarded(
        request, state.translations.translate(flat, flat_sources, target, options, state.deadline())
    )
    translations = iter(result.text for result in results)

    def render() -> list[str]:
        return [
            document.render([next(translations) for _ in own]) if own else text
            for text, document, own in zip(texts, documents, pieces, strict=True)
        ]

    return await off_loop_if_long(characters, render)


@router.post(
    "/detect",
    response_model=list[dict[str, Any]],
    responses=error_responses(400, 403, 413, 429),
    openapi_extra=_body_doc(LtDetectRequest),
    summary="Detect the language of a text (LibreTranslate)",
)
async def detect(request: Request, state: StateDep) -> JSONResponse:
    params = await read_params(request)
    _access(request, state, params)
    texts, _ = _q(params)
    # LibreTranslate applies no character limit here; the body limit still bounds the request.
    detections = await asyncio.to_thread(state.detector.detect_many, [scrub(t) for t in texts])
    return JSONResponse([d.as_dict() for d in detections])


@router.get("/spec", summary="The LibreTranslate routes in Swagger 2.0, as LibreTranslate serves them")
async def spec(request: Request, state: StateDep) -> dict[str, Any]:
    return libretranslate_spec(request.app.version, state.languages)


@router.get("/languages", response_model=list[LtLanguage], summary="Supported languages (LibreTranslate)")
async def languages(state: StateDep) -> list[LtLanguage]:
    """Every language, with the targets it translates into, sorted as LibreTranslate sorts them: those
    a model serves, those a pivot chain reaches, and the language itself (its text comes back as it is)."""
    model = state.languages

    def shown(code: str) -> str:
        return LT_EXPOSED.get(code, code)

    return [
        LtLanguage(code=shown(code), name=language_name(code),
                   targets=sorted(shown(t) for t in {*model.targets(code), code}))
        for code in model.codes
    ]  # fmt: skip


@router.get("/frontend/settings", response_model=LtFrontendSettings, summary="Web client settings (LibreTranslate)")
async def frontend_settings(state: StateDep) -> dict[str, Any]:
    settings = state.settings
    target = state.languages.default_target(None)
    return {
        "charLimit": settings.char_limit,
        "frontendTimeout": settings.frontend_timeout_ms,
        "apiKeys": state.keys.enabled,
        "keyRequired": state.keys.required,
        "suggestions": False,
        "filesTranslation": True,
        "supportedFilesFormat": SUPPORTED_FILE_FORMATS,
        "language": {
            "source": {"code": "auto", "name": "Auto Detect"},
            "target": {"code": target, "name": language_name(target)},
        },
    }


@router.post(
    "/translate_file",
    response_model=LtTranslateFileResponse,
    responses=error_responses(400, 403, 413, 429, 500, 503, 504, 507),
    summary="Translate a file: .txt, .html, .srt, .docx, .pptx, .odt, .odp or .epub (LibreTranslate)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "source", "target"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "source": {"type": "string"},
                            "target": {"type": "string"},
                            "api_key": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def translate_file(request: Request, state: StateDep) -> LtTranslateFileResponse:
    params = await read_params(request)
    _access(request, state, params)
    upload = params.files.get("file")
    if upload is None:
        raise ApiError(400, "Invalid request: missing file parameter")
    languages = state.languages
    source = _language(languages, _required_text(params, "source"), allow_auto=True)
    target = _language(languages, _required_text(params, "target"), allow_auto=False)
    if source != "auto":
        _check_directions(languages, [source], target)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePath(upload.filename or "").name)
    if not name:
        raise ApiError(400, "Invalid request: empty file")
    if document_format(name) not in SUPPORTED_FILE_FORMATS:
        raise ApiError(400, "Invalid request: file format not supported")  # LibreTranslate's words
    raw = await upload.read()
    try:  # reading and rebuilding a file take tenths of a second at the size limits: not on the event loop
        document = await asyncio.to_thread(Document, document_format(name), raw)
    except DocumentError as exc:
        raise ApiError(400, f"Invalid request: {exc}") from None
    limit = state.settings.file_char_limit
    try:
        texts = await asyncio.to_thread(document.texts, None if limit == -1 else limit)
    except TextLimitExceeded as exc:
        raise ApiError(
            400,
            f"Invalid request: request ({exc.characters}) exceeds text limit ({limit}): "
            "the file holds more characters than MTSERVE_FILE_CHAR_LIMIT allows",
        ) from None
    texts = [scrub(t) for t in texts]
    language = source
    if source == "auto":
        language = (await asyncio.to_thread(state.detector.best, " ".join(texts)[:2000])).source_for(target)
    _check_directions(languages, [language], target)
    request.state.direction = f"{source}-{target}"
    options = state.default_options()
    results = await guarded(
        request,
        state.translations.translate(
            texts, [language] * len(texts), target, options, state.deadline(state.settings.file_timeout_s)
        ),
    )
    content = await asyncio.to_thread(document.render, [r.text for r in results])
    try:
        file_id = await asyncio.to_thread(state.files.put, translated_name(name, target), content)
    except FilesDirError as exc:
        retry = {"Retry-After": str(state.settings.retry_after_s)} if exc.status == 503 else None
        raise ApiError(exc.status, exc.message, retry) from None
    return LtTranslateFileResponse(translatedFileUrl=str(request.url_for("download_file", filename=file_id)))


@router.get("/download_file/{filename}", summary="Download a translated file (LibreTranslate)",
            responses=error_responses(404))  # fmt: skip
async def download_file(filename: str, state: StateDep) -> Response:
    stored = state.files.get(filename)
    content = None if stored is None else await asyncio.to_thread(state.files.read, stored)
    if stored is None or content is None:
        raise ApiError(404, f"File not found (translated files are kept for {state.files.ttl_s / 60:g} minutes)")
    return Response(
        content,
        media_type=MEDIA_TYPES.get(document_format(stored.name), "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{stored.name}"'},
    )


@router.post("/suggest", responses=error_responses(403), summary="Suggestions (disabled, as LibreTranslate's default)")
async def suggest() -> JSONResponse:
    raise ApiError(403, "Suggestions are disabled on this server.")
