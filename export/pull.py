"""`mtserve pull`: models by name, downloaded only when asked.

- `pull argos LANG ...`: the Argos packages between the named languages, chosen as LibreTranslate's
  `--load-only` chooses them (both codes in the list, the newest version of each direction), from
  the Argos package index (a setting), downloaded, checked and imported (export/argos.py).
- `pull hf REPO`: a Hugging Face Marian repository through huggingface_hub (which honours
  HF_ENDPOINT, HF_TOKEN and the offline settings), then imported (export/marian.py).

A download goes to `<name>.partial` beside its final name and resumes from there after an
interruption (an HTTP range request); only a whole, checked archive is renamed into place, and
only an archive that imports becomes a model directory.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from export.argos import Outcome, import_packages

log = logging.getLogger("mtserve.pull")

# argostranslate's own package index
DEFAULT_ARGOS_INDEX = "https://raw.githubusercontent.com/argosopentech/argospm-index/main/index.json"
DOWNLOADS = ".downloads"
CHUNK = 1 << 20
# LibreTranslate's codes for Argos's own (its iso2model): requests may name either
ARGOS_CODES = {"pt-br": "pb", "zh-hans": "zh", "zh-hant": "zt"}
# Marian repository files the import reads (weights in either format)
HF_FILES = ["config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "source.spm",
            "target.spm", "model.safetensors", "pytorch_model.bin"]  # fmt: skip


class PullError(RuntimeError):
    """What was asked cannot be pulled: the message names the index, URL or code."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in str(text).split("."))


def read_index(url: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            entries = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PullError(f"package index {url}: {exc}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PullError(f"package index {url}: not a list of packages")
    return entries


def select(entries: Sequence[dict[str, Any]], codes: Sequence[str]) -> list[dict[str, Any]]:
    """The translation packages whose source and target are both among `codes`, newest per direction."""
    wanted = [ARGOS_CODES.get(c.lower(), c.lower()) for c in codes]
    known = {str(e.get(k)) for e in entries for k in ("from_code", "to_code")}
    missing = [c for c, w in zip(codes, wanted, strict=True) if w not in known]
    if missing:
        raise PullError(f"Unavailable language codes: {', '.join(missing)} (not in the package index)")
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        pair = (str(entry.get("from_code")), str(entry.get("to_code")))
        if entry.get("type", "translate") != "translate" or pair[0] not in wanted or pair[1] not in wanted:
            continue
        if pair not in best or _version(entry.get("package_version", "")) > _version(
            best[pair].get("package_version", "")
        ):
            best[pair] = entry
    return [best[pair] for pair in sorted(best)]


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """`url` to `dest`, resuming `dest.partial` where an earlier try stopped; progress on stderr."""
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file already holds everything
            partial.rename(dest)
            return dest
        raise PullError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PullError(f"{url}: {exc}") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        started, done = time.monotonic(), have
        with partial.open("ab" if resumed else "wb") as handle:
            try:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    done += len(chunk)
                    rate = (done - have) / max(time.monotonic() - started, 1e-6)
                    share = f"/{total / 1e6:.1f}" if total else ""
                    print(
                        f"\r  {dest.name}: {done / 1e6:.1f}{share} MB, {rate / 1e6:.1f} MB/s", end="", file=sys.stderr
                    )
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                raise PullError(
                    f"{url}: interrupted at {done} bytes ({exc}); run the command again to resume"
                ) from None
        print(file=sys.stderr)
    if total is not None and partial.stat().st_size != total:
        raise PullError(f"{url}: got {partial.stat().st_size} of {total} bytes; run the command again to resume")
    partial.rename(dest)
    return dest


def _checked(archive: Path, entry: dict[str, Any]) -> Path:
    """A downloaded package that is a ZIP whose metadata names the direction the index promised."""
    try:
        with zipfile.ZipFile(archive) as handle:
            names = [n for n in handle.namelist() if n.count("/") == 1 and n.endswith("/metadata.json")]
            metadata = json.loads(handle.read(names[0])) if names else {}
    except (zipfile.BadZipFile, OSError, ValueError, IndexError) as exc:
        archive.unlink(missing_ok=True)
        raise PullError(f"{archive.name}: not a package archive ({exc}); removed, run the command again") from None
    promised = (entry.get("from_code"), entry.get("to_code"))
    if (metadata.get("from_code"), metadata.get("to_code")) != promised:
        archive.unlink(missing_ok=True)
        raise PullError(f"{archive.name}: its metadata.json is not the index's {promised[0]}→{promised[1]}")
    return archive


def pull_argos(
    codes: Sequence[str],
    out: Path,
    index_url: str,
    precision: str = "fp32",
    calibration_text: Mapping[str, Sequence[str]] | None = None,
) -> list[Outcome]:
    entries = select(read_index(index_url), codes)
    if not entries:
        raise PullError(f"no package in {index_url} translates between {', '.join(codes)}")
    downloads = out / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    archives = []
    for entry in entries:
        links = entry.get("links") or []
        if not links:
            raise PullError(f"package index {index_url}: {entry.get('code')} has no download link")
        name = f"translate-{entry['from_code']}_{entry['to_code']}-{entry.get('package_version', '0')}.argosmodel"
        archive = downloads / name
        if not archive.exists():
            download(str(links[0]), archive)
        archives.append(_checked(archive, entry))
    outcomes = import_packages(archives, out, precision, calibration_text)
    for archive, outcome in zip(archives, outcomes, strict=True):
        if outcome.problem is None:
            archive.unlink()  # imported: the model directory holds all of it
    return outcomes


def pull_hf(
    repo: str, out: Path, precision: str = "fp32", calibration_text: Mapping[str, Sequence[str]] | None = None
) -> Path:
    """Download a Marian repository (huggingface_hub resumes and caches) and import it to out/<name>
    (`calibration_text` as import_marian takes it)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise PullError("huggingface_hub is not installed (pip install huggingface_hub)") from exc
    from export.marian import import_marian

    local = out / DOWNLOADS / repo.split("/")[-1]  # the importer reads the languages from this name
    try:
        snapshot_download(repo_id=repo, local_dir=str(local), allow_patterns=HF_FILES)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise PullError(f"{repo}: {exc}") from None
    model_dir = out / repo.split("/")[-1]
    work = out / f".{model_dir.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    try:
        import_marian(local, work, precision, calibration_text=calibration_text)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(model_dir, ignore_errors=True)
    work.rename(model_dir)
    shutil.rmtree(local, ignore_errors=True)
    return model_dir
