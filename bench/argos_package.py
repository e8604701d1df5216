"""Argos Translate packages built from models we have, the way their builders make them (bench and
tests; needs ctranslate2):

- an mtserve model directory as argos-train packages its models: CTranslate2 (OpenNMT-py names,
  pre-norm, ReLU, int8 by default), one SentencePiece model, the target-language tag as
  metadata.json's `target_prefix`;
- a CTranslate2 directory converted from OPUS-MT, as Locomotive's opus_mt_convert.py packages it:
  the source SentencePiece model only, EOS after each source.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import sentencepiece as spm

from bench.ct2_convert import convert
from service.manifest import load_manifest


def write_package(
    folder: Path, ct2_dir: Path, spm_model: Path, source: str, target: str, version: str = "1.0", **metadata: str
) -> Path:
    """A package folder: metadata.json, model/ (a copy of `ct2_dir`), sentencepiece.model."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(ct2_dir, folder / "model")
    shutil.copyfile(spm_model, folder / "sentencepiece.model")
    names = {"en": "English", "fr": "French", "de": "German"}
    fields = {"package_version": version, "argos_version": "1.9.0", "from_code": source,
              "from_name": names.get(source, source), "to_code": target, "to_name": names.get(target, target),
              **metadata}  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(fields, indent=2))
    return folder


def package_mtserve_model(
    model_dir: Path, work: Path, source: str, target: str, quantization: str | None = "int8", version: str = "1.0"
) -> Path:
    """The package argos-train would make of this checkpoint for source→target; its folder."""
    manifest = load_manifest(model_dir, verify=False)
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "spm.model"))
    tag = sp.id_to_piece(manifest.special_ids.language_tags[target])
    ct2 = convert(model_dir, work / f"ct2-{quantization or 'float32'}", quantization, source_eos=True)
    name = f"translate-{source}_{target}-{version.replace('.', '_')}"
    return write_package(work / name, ct2, model_dir / "spm.model", source, target, version, target_prefix=tag)


def zip_package(folder: Path, archive: Path) -> Path:
    """The .argosmodel of a package folder: one top-level folder, as argospm serves them."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(folder.rglob("*")):
            handle.write(path, Path(folder.name) / path.relative_to(folder))
    return archive
