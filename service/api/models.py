"""The models one service loads, and which of them serves each direction.

Each model directory declares its languages and directions in its manifest. A direction
claimed by two models is a start-up error unless the operator names the winner
(MTSERVE_PREFER); a direction no model serves is a 400 naming it (UnsupportedDirection).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from service.languages import ModelLanguages, UnsupportedDirection
from service.manifest import MANIFEST_FILE, Manifest, ModelFileError, load_manifest
from service.pivot import Route, routes
from service.runtime.beam import DecodeOptions
from service.runtime.fill_mask import FillMask
from service.runtime.glossary import Glossary
from service.runtime.translator import Translator

log = logging.getLogger("mtserve.models")


class ModelSetError(ValueError):
    """The model directories cannot be served together."""


@dataclass(frozen=True)
class Requested:
    """What a request asks of decoding; None: the serving model's default (its manifest's generation)."""

    n_best: int = 1
    beam_size: int | None = None
    length_penalty: float | None = None
    max_length: int | None = None
    glossary: Glossary | None = None
    repetition_guard: bool | None = None  # with the cut of degenerate output; None: the operator's or model's


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unknown)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ServedModel:
    name: str
    model_dir: Path
    translator: Translator
    fill_mask: FillMask | None  # None: no masked-LM head (an imported model)
    sha: str
    version: str
    resident_bytes: int  # what loading it added to the process

    @property
    def languages(self) -> ModelLanguages:
        return self.translator.languages

    def options(self, requested: Requested, default_beam: int = 0, guard: bool | None = None) -> DecodeOptions:
        """The request's choices over the operator's (default beam, `guard`) over the model's own defaults."""
        return DecodeOptions.from_generation(
            self.translator.model.manifest.generation,
            requested.n_best,
            requested.beam_size or default_beam or None,
            requested.length_penalty,
            requested.max_length,
            guard if requested.repetition_guard is None else requested.repetition_guard,
        )


def _load_one(model_dir: Path, threads: int, batch_tokens: int, low_memory: bool) -> ServedModel:
    before = resident_bytes()
    translator = Translator.load(model_dir, threads, batch_tokens, low_memory)
    manifest = translator.model.manifest
    fill = FillMask.from_model(translator.model) if manifest.has_mlm_head else None
    sha = hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    name = model_name(model_dir, manifest)
    version = f"{manifest.origin}-{manifest.precision}-opset{manifest.opset}"
    return ServedModel(name, model_dir, translator, fill, sha, version, max(0, resident_bytes() - before))


def model_name(model_dir: Path, manifest: Manifest) -> str:
    """mtserve's own models are named by their languages, imported ones by their directory."""
    if manifest.origin == "mtserve":
        return "mtserve-" + "-".join(manifest.languages)
    return model_dir.name


@dataclass(frozen=True)
class _Entry:
    name: str
    model_dir: Path
    directions: tuple[tuple[str, str], ...]


def _unique_names(entries: list[_Entry]) -> list[_Entry]:
    names = [e.name for e in entries]
    if len(set(names)) == len(names):
        return entries
    by_dir = [replace(e, name=e.model_dir.name) for e in entries]  # same languages twice: name by directory
    if len({e.name for e in by_dir}) < len(by_dir):
        raise ModelSetError(f"two models share the name or directory name {names}: give each its own directory")
    return by_dir


def assign_directions(entries: Sequence[_Entry], prefer: Sequence[str]) -> dict[tuple[str, str], str]:
    """Direction -> the name of the model that serves it; two claimants need MTSERVE_PREFER."""
    names = [e.name for e in entries]
    unknown = [p for p in prefer if p not in names]
    if unknown:
        raise ModelSetError(f"MTSERVE_PREFER names {unknown}, not a loaded model ({', '.join(names)})")
    out: dict[tuple[str, str], str] = {}
    for direction in dict.fromkeys(d for e in entries for d in e.directions):
        claimants = [e for e in entries if direction in e.directions]
        winner = claimants[0].name
        if len(claimants) > 1:
            preferred = [p for p in prefer if p in {e.name for e in claimants}]
            if not preferred:
                who = " and ".join(f"{e.name} ({e.model_dir})" for e in claimants)
                raise ModelSetError(
                    f"{direction[0]}→{direction[1]} is served by {who}: set MTSERVE_PREFER to the one that wins"
                )
            winner = preferred[0]
        out[direction] = winner
    return out


def check_model_dirs(dirs: Sequence[Path], prefer: Sequence[str] = (), verify: bool = True) -> None:
    """Before anything loads: each directory's manifest and, with `verify`, its file hashes
    (ModelFileError names the file), and that the directories can be served together (ModelSetError)."""
    entries = []
    for model_dir in dirs:
        manifest = load_manifest(model_dir, verify=verify)
        directions = manifest.model_languages().directions
        entries.append(_Entry(model_name(model_dir, manifest), model_dir, directions))
    assign_directions(_unique_names(entries), prefer)


class ModelSet:
    def __init__(self, models: Sequence[ServedModel], prefer: Sequence[str] = (), pivot: str | None = None) -> None:
        """`pivot`: the language chains prefer when no model serves a direction (service/pivot.py);
        None: only the models' own directions are served."""
        if not models:
            raise ModelSetError("no model to serve")
        entries = _unique_names([_Entry(m.name, m.model_dir, m.languages.directions) for m in models])
        self.models = [replace(m, name=e.name) for m, e in zip(models, entries, strict=True)]
        assignment = assign_directions(entries, prefer)
        self.by_direction = {d: self.by_name(name) for d, name in assignment.items()}
        self.pivot = pivot
        self.routes = routes(self.by_direction, pivot)
        codes = tuple(dict.fromkeys(c for m in self.models for c in m.languages.codes))
        starts = {t: 0 for _, t in self.routes}  # the union never decodes: each model keeps its own
        self.languages = ModelLanguages(codes, starts, tuple(self.routes))

    @classmethod
    def load(
        cls,
        dirs: Sequence[Path],
        threads: int,
        batch_tokens: int,
        prefer: Sequence[str] = (),
        low_memory: bool = False,
        pivot: str | None = None,
    ) -> ModelSet:
        """Every manifest read and the set checked before any model loads; each model's file hashes
        are checked as it loads (OnnxModel), so a bad file names itself either way."""
        check_model_dirs(dirs, prefer, verify=False)
        models = []
        for model_dir in dirs:
            served = _load_one(model_dir, threads, batch_tokens, low_memory)
            log.info(
                "model %s from %s: %s, directions %s, %.0f MB resident",
                served.name, model_dir, served.version,
                ", ".join(f"{s}-{t}" for s, t in served.languages.directions), served.resident_bytes / 1e6,
            )  # fmt: skip
            models.append(served)
        return cls(models, prefer, pivot)

    @property
    def single(self) -> bool:
        return len(self.models) == 1

    def for_direction(self, source: str, target: str) -> ServedModel:
        model = self.by_direction.get((source, target))
        if model is None:
            raise UnsupportedDirection(source, target, list(self.by_direction))
        return model

    def route(self, source: str, target: str) -> Route:
        """The languages a text passes through from source to target: (source, target) when a model
        serves the direction, else a pivot chain."""
        route = self.routes.get((source, target))
        if route is None:
            raise UnsupportedDirection(source, target, list(self.routes))
        return route

    def by_name(self, name: str) -> ServedModel:
        return next(m for m in self.models if m.name == name)

    def fill_model(self, language: str | None) -> ServedModel | None:
        """The model fill-mask runs on for `language` (any with a masked-LM head when None)."""
        for model in self.models:
            if model.fill_mask is not None and (language is None or model.languages.has(language)):
                return model
        return None

    def fill_languages(self) -> list[str]:
        return list(dict.fromkeys(c for m in self.models if m.fill_mask is not None for c in m.languages.codes))


__all__ = ["ModelFileError", "ModelSet", "ModelSetError", "Requested", "ServedModel", "check_model_dirs"]
