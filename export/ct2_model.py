"""Read a CTranslate2 model directory: model.bin (binary versions 3 to 6), config.json and the
vocabularies, into plain float32 arrays, names as written, aliases resolved.

model.bin, as CTranslate2's `ModelSpec._serialize` writes it (little-endian, no padding):

    u32 binary_version; then, from version 2: str spec_name, u32 spec_revision
    u32 count; count × (str name, u8 rank, u32 dims[rank],
                        version ≥ 4: u8 dtype, u32 bytes | before: u8 item_size, u32 elements,
                        bytes of data)
    version ≥ 3: u32 count; count × (str alias, str target)
    str: u16 length with the NUL, the UTF-8 bytes, a NUL

Quantized weights are turned back into floats exactly as CTranslate2 stores them: int8 per output
row (`value / weight_scale[row]`), int16 with one scale (`value / weight_scale`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.bin"
CONFIG_FILE = "config.json"
BINARY_VERSIONS = range(3, 7)
# dtype ids of binary version 4 on (CTranslate2's DataType order)
DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: the upper half of a float32
}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
ITEM_SIZES: dict[int, np.dtype[Any]] = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}  # before v4
# config.json keys of a sequence-to-sequence model this reader understands; others are refused
CONFIG_KEYS = {
    "add_source_bos", "add_source_eos", "bos_token", "decoder_start_token", "eos_token", "layer_norm_epsilon",
    "multi_query_attention", "unk_token",
}  # fmt: skip


class CT2FormatError(ValueError):
    """A model directory that cannot be read: the message names the file or variable."""

    def __init__(self, piece: str, problem: str) -> None:
        super().__init__(f"{piece}: {problem}")
        self.piece = piece


@dataclass(frozen=True)
class Variable:
    name: str
    dtype: str  # as stored: float32, float16, bfloat16, int8, int16, int32
    array: np.ndarray  # as stored; bfloat16 as its raw uint16


@dataclass
class CT2Model:
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, Variable]  # aliases resolved to the variable they name
    config: dict[str, Any]  # config.json, or the defaults of a model written before it existed
    source_vocabulary: list[str]
    target_vocabulary: list[str]
    shared_vocabulary: bool
    aliases: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.variables

    def scalar(self, *names: str, default: int | None = None) -> int | None:
        """The first of `names` present, as an int (bools, enums and counts are stored as scalars)."""
        for name in names:
            if name in self.variables:
                return int(self.variables[name].array.reshape(-1)[0])
        return default

    def text(self, name: str) -> str | None:
        """A string attribute (stored as int8 bytes)."""
        if name not in self.variables:
            return None
        return self.variables[name].array.astype(np.uint8).tobytes().decode("utf-8")

    def weight(self, name: str) -> np.ndarray:
        """A float32 array: floats widened, quantized weights divided by their stored scale."""
        if name not in self.variables:
            raise CT2FormatError(f"{MODEL_FILE} variable {name}", "missing")
        var = self.variables[name]
        if var.dtype == "float32":
            return var.array.astype(np.float32)
        if var.dtype == "float16":
            return var.array.astype(np.float32)
        if var.dtype == "bfloat16":
            return (var.array.astype(np.uint32) << 16).view(np.float32)
        if var.dtype in ("int8", "int16"):
            scale_name = name + "_scale"
            if scale_name not in self.variables:
                raise CT2FormatError(f"{MODEL_FILE} variable {name}", f"{var.dtype} without {scale_name}")
            scale = self.weight(scale_name)
            values = var.array.astype(np.float32)
            if var.dtype == "int8":
                if scale.shape != (values.shape[0],):
                    raise CT2FormatError(
                        f"{MODEL_FILE} variable {scale_name}", f"shape {scale.shape}, not one scale per row of {name}"
                    )
                return values / scale[:, None]
            if scale.size != 1:
                raise CT2FormatError(f"{MODEL_FILE} variable {scale_name}", "int16 weights take one scale")
            return values / float(scale.reshape(-1)[0])
        raise CT2FormatError(f"{MODEL_FILE} variable {name}", f"{var.dtype} is not a weight type")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int, what: str) -> bytes:
        if self.at + size > len(self.data):
            raise CT2FormatError(
                MODEL_FILE, f"truncated: {what} runs past the end of the file ({len(self.data)} bytes)"
            )
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u8(self, what: str) -> int:
        return int(self.take(1, what)[0])

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def text(self, what: str) -> str:
        size = self.u16(what)
        raw = self.take(size, what)
        if not raw or raw[-1] != 0:
            raise CT2FormatError(MODEL_FILE, f"{what} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CT2FormatError(MODEL_FILE, f"{what} is not UTF-8") from exc


def _read_variable(reader: _Reader, version: int, index: int) -> Variable:
    name = reader.text(f"the name of variable {index}")
    rank = reader.u8(f"the rank of {name}")
    dims = tuple(reader.u32(f"the shape of {name}") for _ in range(rank))
    count = int(np.prod(dims)) if dims else 1
    if version >= 4:
        dtype_id = reader.u8(f"the type of {name}")
        if dtype_id not in DTYPES:
            raise CT2FormatError(f"{MODEL_FILE} variable {name}", f"unknown dtype id {dtype_id}")
        dtype, dtype_name = DTYPES[dtype_id], DTYPE_NAMES[dtype_id]
        size = reader.u32(f"the size of {name}")
        if size != count * dtype.itemsize:
            raise CT2FormatError(
                f"{MODEL_FILE} variable {name}",
                f"{size} bytes for shape {dims} of {dtype_name} ({count * dtype.itemsize})",
            )
    else:
        item = reader.u8(f"the item size of {name}")
        if item not in ITEM_SIZES:
            raise CT2FormatError(f"{MODEL_FILE} variable {name}", f"unknown item size {item}")
        dtype = ITEM_SIZES[item]
        dtype_name = {4: "float32", 2: "int16", 1: "int8"}[item]
        elements = reader.u32(f"the element count of {name}")
        if elements != count:
            raise CT2FormatError(f"{MODEL_FILE} variable {name}", f"{elements} elements for shape {dims}")
        size = count * dtype.itemsize
    array = np.frombuffer(reader.take(size, f"the data of {name}"), dtype=dtype).reshape(dims)
    return Variable(name, dtype_name, array)


def read_model_bin(path: Path) -> tuple[int, str, int, dict[str, Variable], dict[str, str]]:
    """(binary version, spec name, spec revision, variables with aliases resolved, aliases)."""
    if not path.is_file():
        raise CT2FormatError(str(path), "missing")
    reader = _Reader(path.read_bytes())
    version = reader.u32("the binary version")
    if version not in BINARY_VERSIONS:
        raise CT2FormatError(MODEL_FILE, f"binary version {version}; this reader takes versions 3 to 6")
    spec_name = reader.text("the spec name")
    revision = reader.u32("the spec revision")
    variables: dict[str, Variable] = {}
    for index in range(reader.u32("the variable count")):
        var = _read_variable(reader, version, index)
        variables[var.name] = var
    aliases: dict[str, str] = {}
    for _ in range(reader.u32("the alias count")):
        alias, target = reader.text("an alias name"), reader.text("an alias target")
        aliases[alias] = target
    if reader.at != len(reader.data):
        raise CT2FormatError(MODEL_FILE, f"{len(reader.data) - reader.at} bytes after the last alias")
    for alias, target in aliases.items():
        if target not in variables:
            raise CT2FormatError(f"{MODEL_FILE} alias {alias}", f"names {target}, which is not a variable")
        variables[alias] = Variable(alias, variables[target].dtype, variables[target].array)
        for suffix in ("_scale", "_zero"):  # a quantized alias shares its target's scale
            if target + suffix in variables and alias + suffix not in variables:
                variables[alias + suffix] = variables[target + suffix]
    return version, spec_name, revision, variables, aliases


def _read_vocabulary(model_dir: Path, name: str) -> list[str] | None:
    """`<name>.json` (a list of tokens), else `<name>.txt` (a token per line); None if neither."""
    json_path, txt_path = model_dir / f"{name}.json", model_dir / f"{name}.txt"
    if json_path.is_file():
        try:
            tokens = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CT2FormatError(json_path.name, f"not a JSON list of tokens ({exc})") from exc
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise CT2FormatError(json_path.name, "not a JSON list of tokens")
        return tokens
    if txt_path.is_file():
        lines = txt_path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if lines and all(line.endswith("\r") for line in lines):
            lines = [line[:-1] for line in lines]
        return lines
    return None


def _vocabularies(model_dir: Path, unk: str) -> tuple[list[str], list[str], bool]:
    shared = _read_vocabulary(model_dir, "shared_vocabulary")
    if shared is not None:
        source = target = shared
    else:
        source_v = _read_vocabulary(model_dir, "source_vocabulary")
        target_v = _read_vocabulary(model_dir, "target_vocabulary")
        if source_v is None or target_v is None:
            raise CT2FormatError(
                str(model_dir), "no vocabulary: shared_vocabulary.json/.txt, or source_ and target_vocabulary"
            )
        source, target = source_v, target_v
    # CTranslate2 appends the unknown token where a vocabulary lacks it
    source = source if unk in source else [*source, unk]
    target = target if unk in target else [*target, unk]
    return source, target, shared is not None


def _config(model_dir: Path, version: int) -> dict[str, Any]:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        if version >= 6:
            raise CT2FormatError(CONFIG_FILE, "missing (binary version 6 writes one)")
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CT2FormatError(CONFIG_FILE, f"not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CT2FormatError(CONFIG_FILE, "not a JSON object")
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise CT2FormatError(CONFIG_FILE, f"{', '.join(unknown)}: not understood by this importer")
    return config


def _old_defaults(variables: dict[str, Variable]) -> dict[str, Any]:
    """What a model without config.json means (binary versions before 6): tokens and source
    markers from model.bin attributes where present, else CTranslate2's defaults."""

    def flag(name: str, default: bool) -> bool:
        return bool(variables[name].array.reshape(-1)[0]) if name in variables else default

    def token(name: str, default: str) -> str:
        if name not in variables:
            return default
        return variables[name].array.astype(np.uint8).tobytes().decode("utf-8")

    bos = token("bos_token", "<s>")
    return {
        "unk_token": token("unk_token", "<unk>"),
        "bos_token": bos,
        "eos_token": token("eos_token", "</s>"),
        "add_source_bos": flag("with_source_bos", False),
        "add_source_eos": flag("with_source_eos", False),
        "decoder_start_token": bos if flag("with_target_bos", True) else None,
        "layer_norm_epsilon": None,
    }


def read_ct2_dir(model_dir: Path) -> CT2Model:
    """A CTranslate2 model directory, read and checked as a file format (not yet as a network)."""
    if not model_dir.is_dir():
        raise CT2FormatError(str(model_dir), "not a directory")
    version, spec_name, revision, variables, aliases = read_model_bin(model_dir / MODEL_FILE)
    config = {**_old_defaults(variables), **_config(model_dir, version)}
    source, target, shared = _vocabularies(model_dir, str(config.get("unk_token") or "<unk>"))
    return CT2Model(version, spec_name, revision, variables, config, source, target, shared, aliases)
