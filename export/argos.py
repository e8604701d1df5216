"""`mtserve import argos`: Argos Translate packages (what LibreTranslate runs) -> mtserve model directories.

A package is an `.argosmodel` ZIP holding one folder, or that folder once installed:
metadata.json (from_code, to_code, package_version, optionally target_prefix), model/ (a
CTranslate2 Transformer directory, read by export/ctranslate2.py) and sentencepiece.model.
stanza/ and minisbd/ (sentence splitters) are not needed: mtserve splits sentences itself.
Packages tokenised with Moses and subword-nmt BPE (bpe.model) are refused, naming the package.

Each package becomes one model directory, decoding as argostranslate decodes it (beam 4,
length penalty 0.2, at most 256 tokens), so a user who switches gets the translations
LibreTranslate gave them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from export.calibrate import CalibrationError
from export.ctranslate2 import ARGOS_GENERATION, CT2ImportError, import_ctranslate2

METADATA_FILE = "metadata.json"
PACKAGE_SUFFIX = ".argosmodel"
SPM_FILE = "sentencepiece.model"
BPE_FILE = "bpe.model"
# What an archive may unpack to: the largest Argos packages are a few hundred MB.
MAX_UNPACKED_BYTES = 4 << 30


class ArgosPackageError(ValueError):
    """A package that cannot be imported: names the package and the piece."""

    def __init__(self, package: str, piece: str, problem: str) -> None:
        super().__init__(f"{package}: {piece}: {problem}")
        self.package, self.piece = package, piece


@dataclass(frozen=True)
class Package:
    path: Path  # the package folder (unpacked from its archive where it was one)
    label: str  # what the user named: the archive or the folder
    from_code: str
    to_code: str
    version: str
    target_prefix: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    label: str
    direction: str | None  # "en→fr", or None when skipped
    out: Path | None
    size_bytes: int
    problem: str | None  # why it was skipped

    def line(self) -> str:
        if self.problem is not None:
            return f"skipped {self.label}: {self.problem}"
        return f"{self.direction}  {self.size_bytes / 1e6:.1f} MB  {self.out}  (from {self.label})"


def default_packages_dir(environ: dict[str, str] | None = None) -> Path:
    """LibreTranslate's own packages directory, as argostranslate finds it: $ARGOS_PACKAGES_DIR, else
    that key in argos-translate's settings.json, else the packages folder under its data directory."""
    env = os.environ if environ is None else environ
    if env.get("ARGOS_PACKAGES_DIR"):
        return Path(env["ARGOS_PACKAGES_DIR"]).expanduser()
    home = Path(env.get("HOME") or Path.home())
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    settings = config_home / "argos-translate" / "settings.json"
    if settings.is_file():
        try:
            value = json.loads(settings.read_text(encoding="utf-8")).get("ARGOS_PACKAGES_DIR")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, str) and value:
            return Path(value).expanduser()
    data_home = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    return data_home / "argos-translate" / "packages"


def _check_members(archive: zipfile.ZipFile, label: str) -> str:
    """The one top-level folder of a package archive; refuses paths that leave it, links, bombs."""
    tops: set[str] = set()
    unpacked = 0
    for entry in archive.infolist():
        name = entry.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or not parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
            raise ArgosPackageError(label, f"archive entry {name!r}", "a path that leaves the package folder")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise ArgosPackageError(label, f"archive entry {name!r}", "a symbolic link")
        if entry.flag_bits & 0x1:
            raise ArgosPackageError(label, f"archive entry {name!r}", "encrypted")
        tops.add(parts[0])
        unpacked += entry.file_size
        if len(parts) == 1 and not entry.is_dir():
            raise ArgosPackageError(label, f"archive entry {name!r}", "a file beside the package folder")
    if len(tops) != 1:
        raise ArgosPackageError(label, "archive", f"{len(tops)} top-level folders ({', '.join(sorted(tops))}); "
                                "a package holds exactly one")  # fmt: skip
    if unpacked > MAX_UNPACKED_BYTES:
        raise ArgosPackageError(label, "archive", f"unpacks to {unpacked} bytes, over {MAX_UNPACKED_BYTES}")
    return tops.pop()


@contextmanager
def _unpacked(archive_path: Path) -> Iterator[Path]:
    label = archive_path.name
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArgosPackageError(label, "archive", f"not a ZIP file ({exc})") from None
    with archive, tempfile.TemporaryDirectory(prefix="mtserve-argos-") as work:
        top = _check_members(archive, label)
        try:
            archive.extractall(work)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ArgosPackageError(label, "archive", f"cannot be unpacked ({exc})") from None
        yield Path(work) / top


def read_package(folder: Path, label: str) -> Package:
    path = folder / METADATA_FILE
    if not path.is_file():
        raise ArgosPackageError(label, METADATA_FILE, "missing")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArgosPackageError(label, METADATA_FILE, f"not JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ArgosPackageError(label, METADATA_FILE, "not a JSON object")
    if metadata.get("type", "translate") != "translate":
        raise ArgosPackageError(label, METADATA_FILE, f"type {metadata['type']!r}: only translation packages")
    codes = []
    for key in ("from_code", "to_code"):
        value = metadata.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ArgosPackageError(label, f"{METADATA_FILE} {key}", "missing")
        codes.append(value.strip())
    prefix = metadata.get("target_prefix") or None
    if prefix is not None and not isinstance(prefix, str):
        raise ArgosPackageError(label, f"{METADATA_FILE} target_prefix", "not a string")
    if not (folder / "model").is_dir():
        raise ArgosPackageError(label, "model/", "missing: the CTranslate2 model directory")
    if not (folder / SPM_FILE).is_file():
        if (folder / BPE_FILE).is_file():
            raise ArgosPackageError(label, BPE_FILE, "a BPE package (Moses tokenisation and subword-nmt): "
                                    "only SentencePiece packages are imported")  # fmt: skip
        raise ArgosPackageError(label, SPM_FILE, "missing")
    version = str(metadata.get("package_version", ""))
    return Package(folder, label, codes[0], codes[1], version, prefix, metadata)


def out_name(package: Package) -> str:
    """argospm's own name for the package: translate-<from>_<to>."""
    return f"translate-{package.from_code}_{package.to_code}"


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def import_package(
    package: Package,
    out_dir: Path,
    precision: str = "fp32",
    calibration_text: Mapping[str, Sequence[str]] | None = None,
) -> Outcome:
    """`calibration_text` (language -> sentences): the int8 activations' constant scales are
    calibrated on the package's source language's sentences, which must be there."""
    calibration = None
    if calibration_text is not None:
        source = package.from_code
        if source not in calibration_text:
            hint = f"none given: add --calibrate {source}=FILE"
            raise ArgosPackageError(package.label, f"calibration text in {source}", hint)
        calibration = {source: calibration_text[source]}
    out = out_dir / out_name(package)
    work = out_dir / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    try:
        import_ctranslate2(
            package.path / "model",
            work,
            package.from_code,
            package.to_code,
            package.path / SPM_FILE,
            target_prefix=package.target_prefix,
            precision=precision,
            generation=ARGOS_GENERATION,
            origin="argos",
            calibration_text=calibration,
        )
    except CalibrationError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise ArgosPackageError(package.label, f"calibration text in {exc.language}", exc.problem) from None
    except CT2ImportError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise ArgosPackageError(package.label, f"model/{exc.where}", str(exc).removeprefix(exc.where + ": ")) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    provenance = {k: str(package.metadata[k]) for k in ("package_version", "argos_version", "from_name", "to_name")
                  if k in package.metadata}  # fmt: skip
    (work / "argos_metadata.json").write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)  # a model directory appears whole, or not at all
    return Outcome(package.label, f"{package.from_code}→{package.to_code}", out, _size(out), None)


def _candidates(paths: Sequence[Path]) -> list[Path]:
    """Archives and package folders (metadata.json or model/ in it); a folder of packages gives each
    one in it."""
    found: list[Path] = []
    for path in paths:
        if path.is_file() or (path / METADATA_FILE).is_file() or (path / "model").is_dir():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_dir() or p.suffix == PACKAGE_SUFFIX))
        else:
            found.append(path)  # reported as missing
    return found


def import_packages(
    paths: Sequence[Path],
    out_dir: Path,
    precision: str = "fp32",
    calibration_text: Mapping[str, Sequence[str]] | None = None,
) -> list[Outcome]:
    """Every package named, each into its own model directory under `out_dir`; one outcome each
    (`calibration_text` as import_package takes it)."""
    outcomes: list[Outcome] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in _candidates(paths):
        label = path.name or str(path)
        try:
            if not path.exists():
                raise ArgosPackageError(str(path), "path", "missing")
            if path.is_file():
                with _unpacked(path) as folder:
                    outcomes.append(import_package(read_package(folder, label), out_dir, precision, calibration_text))
            else:
                outcomes.append(import_package(read_package(path, label), out_dir, precision, calibration_text))
        except ArgosPackageError as exc:
            outcomes.append(Outcome(label, None, None, 0, str(exc).removeprefix(f"{exc.package}: ")))
    return outcomes
