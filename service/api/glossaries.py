"""A request's `glossary`: a list of {"source": term, "target": term}, or the name of one the operator loaded."""

from __future__ import annotations

import json

from service.api.errors import ApiError
from service.runtime.glossary import Glossary, GlossaryError, build_glossary


def resolve_glossary(value: object, loaded: dict[str, Glossary], status: int = 400) -> Glossary | None:
    """The glossary a request names or lists; an ApiError naming the field, the entry or the limit."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str) and value.lstrip().startswith("["):  # a form or query field carrying JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ApiError(status, "Invalid request: glossary is not a valid JSON list") from None
    if isinstance(value, str):
        if value not in loaded:
            names = ", ".join(sorted(loaded)) or "none (MTSERVE_GLOSSARY_DIR is not set)"
            raise ApiError(status, f"Invalid request: glossary {value!r} is not loaded; this server has: {names}")
        return loaded[value]
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ApiError(status, 'Invalid request: glossary must be a name or a list of {"source": ..., "target": ...}')
    pairs = []
    for i, entry in enumerate(value):
        if set(entry) != {"source", "target"}:
            raise ApiError(status, f'Invalid request: glossary[{i}] must have exactly the keys "source" and "target"')
        pairs.append((entry["source"], entry["target"]))
    try:
        return build_glossary(pairs)
    except GlossaryError as exc:
        raise ApiError(status, f"Invalid request: {exc}") from None
