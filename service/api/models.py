"""The models one service loads, and which of them serves each direction.

Each model directory declares its languages and directions in its manifest. A direction
claimed by two models is a start-up error unless the operator names the winner
(MTSERVE_PREFER); a direction no model serves is a 400 naming it (UnsupportedDirection).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from service.languages import ModelLanguages, UnsupportedDirection
from service.manifest import MANIFEST_FILE, Manifest, ModelFileError, load_manifest
from service.pivot import Route, routes
from service.runtime.beam import DecodeOptions
from service.runtime.fill_mask import FillMask
from service.runtime.glossary import Glossary
from service.runtime.translator import Translator


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


def load_model(
    entry: Installed, threads: int, batch_tokens: int, low_memory: bool, packed_root: Path | None
) -> ServedModel:
    """Sessions, tokenizer and fill-mask of one installed model; its file hashes are checked here.
    packed_root: where its graphs' packed copies are kept (service/runtime/packed.py); None: none."""
    before = resident_bytes()
    translator = Translator.load(entry.model_dir, threads, batch_tokens, low_memory, packed_root or False)
    fill = FillMask.from_model(translator.model) if entry.manifest.has_mlm_head else None
    added = max(0, resident_bytes() - before)
    return ServedModel(entry.name, entry.model_dir, translator, fill, entry.sha, entry.version, added)


def model_name(model_dir: Path, manifest: Manifest) -> str:
    """mtserve's own models are named by their languages, imported ones by their directory."""
    if manifest.origin == "mtserve":
        return "mtserve-" + "-".join(manifest.languages)
    return model_dir.name


@dataclass(frozen=True)
class Installed:
    """A model directory known to the service, read and checked at start, loaded or not."""

    name: str
    model_dir: Path
    manifest: Manifest
    sha: str  # of its manifest, which holds every file's sha256
    disk_bytes: int  # graphs and weights

    @cached_property
    def directions(self) -> tuple[tuple[str, str], ...]:
        return self.manifest.model_languages().directions

    @property
    def version(self) -> str:
        m = self.manifest
        shortlisted = "-shortlist" if "output_layer" in m.files else ""  # mtserve shortlist: a different output layer
        return f"{m.origin}-{m.precision}-opset{m.opset}{shortlisted}"


def _unique_names(entries: list[Installed]) -> list[Installed]:
    names = [e.name for e in entries]
    if len(set(names)) == len(names):
        return entries
    by_dir = [replace(e, name=e.model_dir.name) for e in entries]  # same languages twice: name by directory
    if len({e.name for e in by_dir}) < len(by_dir):
        raise ModelSetError(f"two models share the name or directory name {names}: give each its own directory")
    return by_dir


def assign_directions(entries: Sequence[Installed], prefer: Sequence[str]) -> dict[tuple[str, str], str]:
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


def _disk_bytes(model_dir: Path, manifest: Manifest) -> int:
    return sum((model_dir / name).stat().st_size for name in manifest.sha256 if (model_dir / name).is_file())


def read_installed(
    dirs: Sequence[Path], prefer: Sequence[str] = (), verify: bool = True, single_name: str = ""
) -> list[Installed]:
    """Each directory's manifest and, with `verify`, its file hashes (ModelFileError names the file),
    and that the directories can be served together (ModelSetError). `single_name` names a single
    model (MTSERVE_MODEL_NAME)."""
    if not dirs:
        raise ModelSetError("no model to serve: MTSERVE_MODELS names no model directory (an empty models volume?)")
    entries = []
    for model_dir in dirs:
        manifest = load_manifest(model_dir, verify=verify)
        sha = hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
        name = model_name(model_dir, manifest)
        entries.append(Installed(name, model_dir, manifest, sha, _disk_bytes(model_dir, manifest)))
    entries = _unique_names(entries)
    if len(entries) == 1 and single_name:
        entries = [replace(entries[0], name=single_name)]
    assign_directions(entries, prefer)
    return entries


def check_model_dirs(dirs: Sequence[Path], prefer: Sequence[str] = (), verify: bool = True) -> None:
    """Before anything loads: every manifest, hash and direction claim checked."""
    read_installed(dirs, prefer, verify)


class ModelSet:
    """The installed models and which of them serves each direction, loaded or not."""

    def __init__(self, entries: Sequence[Installed], prefer: Sequence[str] = (), pivot: str | None = None) -> None:
        """`pivot`: the language chains prefer when no model serves a direction (service/pivot.py);
        None: only the models' own directions are served."""
        if not entries:
            raise ModelSetError("no model to serve")
        self.entries = _unique_names(list(entries))
        self.by_direction = {d: self.by_name(name) for d, name in assign_directions(self.entries, prefer).items()}
        self.pivot = pivot
        self.routes = routes(self.by_direction, pivot)
        codes = tuple(dict.fromkeys(c for e in self.entries for c in e.manifest.languages))
        starts = {t: 0 for _, t in self.routes}  # the union never decodes: each model keeps its own
        self.languages = ModelLanguages(codes, starts, tuple(self.routes))

    @property
    def single(self) -> bool:
        return len(self.entries) == 1

    def for_direction(self, source: str, target: str) -> Installed:
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

    def by_name(self, name: str) -> Installed:
        return next(e for e in self.entries if e.name == name)

    def fill_model(self, language: str | None) -> Installed | None:
        """The model fill-mask runs on for `language` (any with a masked-LM head when None)."""
        for entry in self.entries:
            if entry.manifest.has_mlm_head and (language is None or language in entry.manifest.languages):
                return entry
        return None

    def fill_languages(self) -> list[str]:
        return list(dict.fromkeys(c for e in self.entries if e.manifest.has_mlm_head for c in e.manifest.languages))


__all__ = ["Installed", "ModelFileError", "ModelSet", "ModelSetError", "Requested", "ServedModel", "check_model_dirs"]
