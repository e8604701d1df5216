"""The exported model directory's manifest: what the exporter writes and the runtime reads.

Torch-free, so both sides share one schema.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

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
    bos: int | None = None
    eos: int
    mask: int | None = None  # None: the model has no masked-LM head
    cls: int | None = None
    sep: int | None = None
    language_tags: dict[str, int] = {}  # mtserve models: target language -> decoder start token


class Generation(BaseModel):
    """How the model decodes by default; each differing rule of another beam search is an option
    (service/runtime/beam.py, docs/DESIGN.md)."""

    model_config = ConfigDict(extra="forbid")
    beam_size: int = 5
    length_penalty: float = 1.0
    max_length: int = 0  # target tokens, EOS included; 0: the proportional rule alone
    proportional_limit: bool = True  # also at most 2·source + 10 tokens (conventions.max_target_length)
    early_stopping: bool = True  # a sentence ends once beam_size hypotheses have
    forced_eos: bool = False  # at the limit a hypothesis ends with EOS at probability 1
    min_length: int = 0  # tokens before EOS may end a hypothesis (CTranslate2's min_decoding_length: 1)
    # mtserve's own rules against runaway output (service/runtime/degenerate.py, docs/DESIGN.md): on
    # for models trained here; an import keeps its source engine's behaviour, which has neither.
    repetition_guard: bool = True  # a token may not extend a run of a repeated 1- to 4-gram
    cut_degenerate: bool = True  # degenerate hypotheses rank last; only-degenerate output is cut
    # An unknown output token becomes the source piece the decoder attended to most when it chose it
    # (CTranslate2's replace_unknowns, which argostranslate asks for); needs a decoder step with an
    # alignment output (service/graphs.py).
    replace_unknowns: bool = False


class TokenizerSpec(BaseModel):
    """ "sentencepiece": one model whose ids are the model's (mtserve's own). "vocab": a source and
    a target SentencePiece model whose pieces map to ids through a vocabulary (Marian's, CTranslate2's):
    files role `vocab`, and `target_vocab` where the target side has its own."""

    model_config = ConfigDict(extra="forbid")
    kind: str = "sentencepiece"


# 3: the decoder step reads a preallocated cache through beam indices (service/graphs.py);
# format 2's step took the cache as a growing tensor and reordered it by beam origin.
FORMAT_VERSION = 3


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    opset: int
    precision: str  # fp32 or int8
    # int8 graphs: weights within ±(2^(bits-1) - 1). At 7 bits the u8·s8 kernel of CPUs without
    # VNNI, which adds pairs of products in 16 bits, cannot saturate (export/quantize.py).
    int8_weight_bits: int = 8
    files: dict[str, str]  # role -> file name: encoder, decoder, mlm_head (optional), tokenizer or
    # source_tokenizer, target_tokenizer and vocab
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
    # Where the model came from ("mtserve"; "marian", "ctranslate2" or "argos" for an import) and how it decodes.
    origin: str = "mtserve"
    tokenizer: TokenizerSpec = TokenizerSpec()
    # Target language -> the decoder's first token; None: special_ids.language_tags.
    decoder_start: dict[str, int] | None = None
    # Target language -> tokens put before the source (a multi-target Marian model's >>fra<<).
    source_prefix: dict[str, list[int]] = {}
    # Target language -> tokens forced after the decoder's first (CTranslate2's target_prefix after
    # its decoder_start_token); left out of the output. One length for every target.
    decoder_prefix: dict[str, list[int]] = {}
    source_eos: bool = True  # EOS ends every source (an OpenNMT-py model imported from CTranslate2 has none)
    generation: Generation = Generation()

    @model_validator(mode="before")
    @classmethod
    def _runaway_rules_by_origin(cls, data: Any) -> Any:
        """Manifests written before the runaway rules were recorded: models trained here had them,
        imports are served as their source engine decodes."""
        if isinstance(data, dict) and isinstance(data.get("generation"), dict):
            generation, own = data["generation"], data.get("origin", "mtserve") == "mtserve"
            data = {**data, "generation": {"repetition_guard": own, "cut_degenerate": own, **generation}}
        return data

    @model_validator(mode="after")
    def _one_decoder_prefix_length(self) -> Manifest:
        if len({len(p) for p in self.decoder_prefix.values()}) > 1:
            raise ValueError(f"decoder_prefix: every target's prefix must have one length, got {self.decoder_prefix}")
        return self

    @property
    def has_mlm_head(self) -> bool:
        return "mlm_head" in self.files

    def model_languages(self) -> ModelLanguages:
        directions = self.directions
        if directions is None:
            directions = [(s, t) for s in self.languages for t in self.languages if s != t]
        starts = self.special_ids.language_tags if self.decoder_start is None else self.decoder_start
        return ModelLanguages(tuple(self.languages), dict(starts), tuple(directions))


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


# Digests this process computed, with the file's identity and modification time then: a model
# unloaded and loaded again (a memory budget) is not read through again while its files are
# unchanged; a file written since (same size or not) is hashed again.
_digests: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
# A file modified this recently when hashed is hashed again next time: a write within the clock's
# granularity of the hash would leave the same modification time (git's "racy" entries).
_SETTLED_NS = 2_000_000_000


def checked_sha256(path: Path) -> str:
    """sha256_file, once per process while the file is unchanged."""
    stat = path.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    known = _digests.get(path)
    if known is not None and known[0] == identity:
        return known[1]
    digest = sha256_file(path)
    if time.time_ns() - stat.st_mtime_ns > _SETTLED_NS:
        _digests[path] = (identity, digest)
    return digest


def load_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read manifest.json and, by default, check every file's sha256 (once per process while the
    file is unchanged)."""
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelFileError(path, "missing")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"not a valid manifest ({exc})") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ModelFileError(
            path,
            f"format {manifest.format_version}, written by another mtserve version; this one reads format "
            f"{FORMAT_VERSION}: export the checkpoint again (`mtserve export`, or `mtserve import marian`)",
        )
    if verify:
        for name, expected in manifest.sha256.items():
            file = model_dir / name
            if not file.is_file():
                raise ModelFileError(file, "missing")
            got = checked_sha256(file)
            if got != expected:
                raise ModelFileError(
                    file, f"sha256 {got} does not match the manifest's {expected}: corrupt or replaced"
                )
    return manifest
