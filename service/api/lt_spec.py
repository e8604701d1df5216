"""`GET /spec`: the LibreTranslate routes described as LibreTranslate serves them, in Swagger 2.0.

Clients check an instance by it (Dialect requires `info.title == "LibreTranslate"`). The full
native API stays at /openapi.json and /docs.
"""

from __future__ import annotations

from typing import Any

from service.languages import ModelLanguages


def _param(name: str, description: str, required: bool = False, kind: str = "string") -> dict[str, Any]:
    return {"in": "formData", "name": name, "type": kind, "required": required, "description": description}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "schema": {"type": "object", "properties": {"error": {"type": "string", "description": "Error message"}}},
    }


_ERRORS = {
    "400": _error("Invalid request"),
    "403": _error("Banned or a wrong API key"),
    "429": _error("Slow down"),
    "500": _error("Translation error"),
}
_API_KEY = _param("api_key", "API key")


def libretranslate_spec(version: str, languages: ModelLanguages) -> dict[str, Any]:
    codes = ", ".join(languages.codes)
    detection = {
        "type": "object",
        "properties": {"confidence": {"type": "number"}, "language": {"type": "string"}},
    }
    paths: dict[str, Any] = {
        "/translate": {"post": {
            "tags": ["translate"], "summary": "Translate text",
            "parameters": [
                _param("q", "Text(s) to translate: a string or a list of strings", True),
                _param("source", f"Source language code ({codes}) or auto", True),
                _param("target", f"Target language code ({codes})", True),
                _param("format", "text or html"),
                _param("alternatives", "Number of alternative translations", kind="integer"),
                _API_KEY,
            ],
            "responses": {"200": {"description": "Translation", "schema": {"type": "object", "properties": {
                "translatedText": {"type": "string"}, "alternatives": {"type": "array", "items": {"type": "string"}},
                "detectedLanguage": detection,
            }}}, **_ERRORS},
        }},
        "/translate_file": {"post": {
            "tags": ["translate"], "summary": "Translate file",
            "consumes": ["multipart/form-data"],
            "parameters": [
                {"in": "formData", "name": "file", "type": "file", "required": True,
                 "description": "File to translate"},
                _param("source", f"Source language code ({codes}) or auto", True),
                _param("target", f"Target language code ({codes})", True),
                _API_KEY,
            ],
            "responses": {"200": {"description": "Translated file", "schema": {"type": "object", "properties": {
                "translatedFileUrl": {"type": "string"}}}}, **_ERRORS},
        }},
        "/detect": {"post": {
            "tags": ["translate"], "summary": "Detect the language of a single text or of a list",
            "parameters": [_param("q", "Text(s) to detect", True), _API_KEY],
            "responses": {"200": {"description": "Detections, most likely first",
                                  "schema": {"type": "array", "items": detection}}, **_ERRORS},
        }},
        "/languages": {"get": {
            "tags": ["translate"], "summary": "Retrieve list of supported languages",
            "responses": {"200": {"description": "List of languages", "schema": {"type": "array", "items": {
                "type": "object", "properties": {
                    "code": {"type": "string"}, "name": {"type": "string"},
                    "targets": {"type": "array", "items": {"type": "string"}},
                }}}}},
        }},
        "/frontend/settings": {"get": {
            "tags": ["frontend"], "summary": "Retrieve frontend specific settings",
            "responses": {"200": {"description": "frontend settings", "schema": {"type": "object"}}},
        }},
    }  # fmt: skip
    return {
        "swagger": "2.0",
        "info": {
            "title": "LibreTranslate",
            "version": version,
            "description": "mtserve's LibreTranslate-compatible API (the full API: /openapi.json).",
            "license": {"name": "Apache-2.0"},
        },
        "basePath": "/",
        "paths": paths,
    }
