"""The exported model directory's manifest: what the exporter writes and the runtime reads.

Torch-free, so both sides share one schema.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from service.languages import ModelLanguages

MANIFEST_FILE = "manifest.json"
# The committed default model, beside the packages in a checkout.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "default"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
MLM_FILE = "mlm_head.onnx"
FILL_VOCAB_FILE = "fill_words.json"


class SpecialIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pad: int
    unk: int
    bos: int
    eos: int
    mask: int
    cls: int
    sep: int
    language_tags: dict[str, int]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = 2
    opset: int
    precision: str  # fp32 or int8
    files: dict[str, str]  # role -> file name: encoder, decoder, mlm_head, tokenizer
    sha256: dict[str, str]  # file name -> hex digest
    special_ids: SpecialIds
    languages: list[str]
    # (source, target) pairs the model was trained on; format 1 had none and meant every pair.
    directions: list[tuple[str, str]] | None = None
    vocab_size: int
    d_model: int
    n_heads: int
    decoder_layers: int
    head_dim: int

    def model_languages(self) -> ModelLanguages:
        directions = self.directions
        if directions is None:
            directions = [(s, t) for s in self.languages for t in self.languages if s != t]
        return ModelLanguages(tuple(self.languages), dict(self.special_ids.language_tags), tuple(directions))


class ModelFileError(RuntimeError):
    """A model file is missing or does not match the manifest."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"model file {path}: {problem}")
        self.path = path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read manifest.json and, by default, check every file's sha256."""
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelFileError(path, "missing")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"not a valid manifest ({exc})") from exc
    if verify:
        for name, expected in manifest.sha256.items():
            file = model_dir / name
            if not file.is_file():
                raise ModelFileError(file, "missing")
            got = sha256_file(file)
            if got != expected:
                raise ModelFileError(
                    file, f"sha256 {got} does not match the manifest's {expected}: corrupt or replaced"
                )
    return manifest
