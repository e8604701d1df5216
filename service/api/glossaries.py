"""A request's `glossary`: a list of {"source": term, "target": term}, or the name of one the operator loaded."""

from __future__ import annotations

import asyncio
import functools
import json

from service.api.errors import ApiError
from service.runtime.glossary import MAX_ENTRIES, Glossary, GlossaryError, build_glossary

# A request's own glossary of more entries than this (or, as a form field's JSON, of more
# characters) is built in a worker thread: compiling 1,000 new terms takes about 18 ms, 100 about
# 2.4 ms, and the event loop answers no other request meanwhile (docs/BENCHMARKS.md).
OFF_LOOP_ENTRIES = 64
OFF_LOOP_CHARS = 4_000
# Request glossaries built lately, by their entries: a client that sends the same glossary with
# every request has it built once (1,000 terms took 1.9 ms to build again from Python's cached
# pattern).
RECENT_GLOSSARIES = 16


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
        if len(pairs) <= MAX_ENTRIES and all(isinstance(term, str) for pair in pairs for term in pair):
            return _recent_glossary(tuple(pairs))
        return build_glossary(pairs)  # which names the entry or the limit
    except GlossaryError as exc:
        raise ApiError(status, f"Invalid request: {exc}") from None


async def resolve_glossary_off_loop(value: object, loaded: dict[str, Glossary], status: int = 400) -> Glossary | None:
    """resolve_glossary, in a worker thread where the request lists a long glossary of its own."""
    if (isinstance(value, list) and len(value) > OFF_LOOP_ENTRIES) or (
        isinstance(value, str) and len(value) > OFF_LOOP_CHARS
    ):
        return await asyncio.to_thread(resolve_glossary, value, loaded, status)
    return resolve_glossary(value, loaded, status)


@functools.lru_cache(maxsize=RECENT_GLOSSARIES)
def _recent_glossary(pairs: tuple[tuple[str, str], ...]) -> Glossary:
    return build_glossary(pairs)
