"""Request and response bodies, as the OpenAPI schema describes them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.errors import ErrorBody
from service.runtime.glossary import MAX_ENTRIES, MAX_TERM_CHARS

# ---- LibreTranslate ------------------------------------------------------------------------


class GlossaryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="a term of the source text, whole words")
    target: str = Field(min_length=1, max_length=MAX_TERM_CHARS, description="its translation, exactly as given")


class LtTranslateRequest(BaseModel):
    """Sent as JSON or as a form; documentation only (the route reads both)."""

    q: str | list[str] = Field(description="text, or a list of texts, to translate")
    source: str = Field(description="source language (one of /languages), or auto to detect it")
    target: str = Field(description="target language (one of the source's targets in /languages)")
    format: Literal["text", "html"] = "text"
    alternatives: int = Field(0, ge=0, le=3, description="alternative translations wanted")
    glossary: str | list[GlossaryEntry] | None = Field(
        None, description="terms whose translation is fixed, or the name of a glossary the server loaded (mtserve)"
    )
    api_key: str | None = None


class DetectedLanguage(BaseModel):
    confidence: float = Field(ge=0, le=100)
    language: str


class LtTranslateResponse(BaseModel):
    translatedText: str | list[str]
    alternatives: list[str] | list[list[str]] | None = None
    detectedLanguage: DetectedLanguage | list[DetectedLanguage] | None = None


class LtDetectRequest(BaseModel):
    q: str | list[str]
    api_key: str | None = None


class LtLanguage(BaseModel):
    code: str
    name: str
    targets: list[str]


class LtFrontendLanguage(BaseModel):
    code: str
    name: str


class LtFrontendLanguages(BaseModel):
    source: LtFrontendLanguage
    target: LtFrontendLanguage


class LtFrontendSettings(BaseModel):
    charLimit: int
    frontendTimeout: int
    apiKeys: bool
    keyRequired: bool
    suggestions: bool
    filesTranslation: bool
    supportedFilesFormat: list[str]
    language: LtFrontendLanguages


class LtTranslateFileResponse(BaseModel):
    translatedFileUrl: str


# ---- native v1 -----------------------------------------------------------------------------


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="texts to translate; each may hold several sentences")
    source: str = Field("auto", description="source language (one of /languages), or auto to detect it")
    target: str = Field(description="target language; the model must translate source→target")
    beam_size: int | None = Field(
        None, ge=1, le=8, description="default: the serving model's (5 for mtserve's own, num_beams for imports)"
    )
    num_hypotheses: int = Field(1, ge=1, le=8, description="hypotheses per text, at most beam_size")
    length_penalty: float | None = Field(
        None, ge=0.0, le=4.0, description="score = log p / length^length_penalty; default: the model's (1.0)"
    )
    max_length: int | None = Field(None, ge=1, le=256, description="target tokens per sentence, EOS included")
    repetition_guard: bool | None = Field(
        None,
        description="stop runaway repeats and cut degenerate output (docs/DESIGN.md); default: "
        "MTSERVE_REPETITION_GUARD, else the model's own (on for mtserve's models, off for imports)",
    )
    glossary: (
        Annotated[str, Field(max_length=200)] | Annotated[list[GlossaryEntry], Field(max_length=MAX_ENTRIES)] | None
    ) = Field(
        None,
        description="terms whose translation is fixed (whole words; a lower-case term matches any case), "
        "or the name of a glossary loaded from MTSERVE_GLOSSARY_DIR",
    )
    return_scores: bool = True


class Hypothesis(BaseModel):
    text: str
    score: float | None = None


class TextResult(BaseModel):
    text: str
    score: float | None = None
    quality: Literal["ok", "low"] = Field(
        "ok", description="low: the model produced only degenerate output here (a loop, or far too long or short)"
    )
    alternatives: list[Hypothesis]
    source_tokens: int
    target_tokens: int
    detected_language: DetectedLanguage | None = None


class TranslateResponse(BaseModel):
    translations: list[TextResult]
    model: str


class FillMaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="text with one or more <mask> (or [MASK]), each standing for a word")
    top_k: int = Field(5, ge=1, le=20)
    targets: list[str] | None = Field(None, min_length=1, max_length=100, description="score only these words")
    language: str | None = Field(
        None, description="the text's language: picks the model with a masked-LM head that has it"
    )


class FillCandidate(BaseModel):
    score: float = Field(ge=0, le=1)
    token: int
    token_str: str
    sequence: str


FillMaskResponse = list[FillCandidate] | list[list[FillCandidate]]


# ---- operations ------------------------------------------------------------------------------


class FilesDir(BaseModel):
    directory: str
    state: Literal["ok", "full", "unwritable", "missing"]
    free_bytes: int | None


class Health(BaseModel):
    status: Literal["ok"]  # the process answers; the parts below may still be degraded
    files: FilesDir  # where /translate_file stores translated documents


class Readiness(BaseModel):
    status: Literal["ready", "loading", "draining"]
    model: str
    sha: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may answer."""
    return {code: {"model": ErrorBody} for code in codes}
