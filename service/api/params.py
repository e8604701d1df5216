"""LibreTranslate-style request parameters: a JSON object, or a form (urlencoded or multipart), plus the query."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.datastructures import UploadFile

from service.api.access import bearer_token
from service.api.errors import ApiError


@dataclass
class Params:
    values: dict[str, Any]
    files: dict[str, UploadFile] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.values.get(name)

    @property
    def api_key(self) -> str | None:
        key = self.values.get("api_key")
        return key if isinstance(key, str) and key else None


async def read_params(request: Request) -> Params:
    """Parse the body the way LibreTranslate does; a malformed body is a 400 naming the problem."""
    values: dict[str, Any] = {}
    for key in request.query_params:
        values[key] = request.query_params[key]
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: dict[str, UploadFile] = {}
    if content_type == "application/json" or content_type.endswith("+json"):
        body = await request.body()
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nesting at any depth
            raise ApiError(400, "Invalid JSON format") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid JSON format")  # LibreTranslate's exact words: clients match on them
        values.update(data)
    elif content_type == "application/x-www-form-urlencoded":
        body = await request.body()
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict",
                              max_num_fields=20_000)  # fmt: skip
        except UnicodeDecodeError:
            raise ApiError(400, "Invalid form body: it is not valid UTF-8") from None
        except ValueError as exc:
            raise ApiError(400, f"Invalid form body: {exc}") from None
        for key, value in pairs:
            _add(values, key, value)
    elif content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=4, max_fields=20_000)
        except Exception as exc:  # python-multipart and starlette raise several kinds on malformed forms
            raise ApiError(400, f"Invalid form body: {exc}") from None
        for key, item in form.multi_items():
            if isinstance(item, UploadFile):
                files.setdefault(key, item)
            else:
                _add(values, key, item)
    else:
        body = await request.body()
        if body.strip():
            raise ApiError(
                415 if content_type else 400,
                "Unsupported body: send application/json, application/x-www-form-urlencoded or multipart/form-data",
            )
    if not values.get("api_key"):
        token = bearer_token(request)
        if token:
            values["api_key"] = token
    return Params(values, files)


def _add(values: dict[str, Any], key: str, value: str) -> None:
    """A repeated form field becomes a list (several q values: a batch)."""
    if key in values and not isinstance(values[key], str):
        values[key].append(value)
    elif key in values:
        values[key] = [values[key], value]
    else:
        values[key] = value
