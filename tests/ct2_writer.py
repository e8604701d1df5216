"""model.bin written from the format's description, for files CTranslate2 no longer writes: older
binary versions and spec revisions, and broken ones (the reader is export/ct2_model.py)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}
ITEM_SIZES = {"float32": 4, "int16": 2, "int8": 1}


def _text(value: str) -> bytes:
    raw = value.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def model_bin(
    variables: Mapping[str, tuple[str, np.ndarray]],
    version: int = 6,
    spec_name: str = "TransformerSpec",
    revision: int = 7,
    aliases: Mapping[str, str] | None = None,
    dtype_ids: Mapping[str, int] | None = None,
) -> bytes:
    """The bytes of a model.bin: `variables` name -> (dtype name, array), written sorted by name.
    `dtype_ids` overrides a variable's stored type id (to write a broken file)."""
    out = [struct.pack("<I", version), _text(spec_name), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name in sorted(variables):
        dtype, array = variables[name]
        data = np.ascontiguousarray(array).tobytes()
        out += [_text(name), struct.pack("<B", array.ndim), *(struct.pack("<I", d) for d in array.shape)]
        if version >= 4:
            type_id = (dtype_ids or {}).get(name, DTYPE_IDS[dtype])
            out += [struct.pack("<B", type_id), struct.pack("<I", len(data))]
        else:
            out += [struct.pack("<B", ITEM_SIZES[dtype]), struct.pack("<I", array.size)]
        out.append(data)
    if version >= 3:
        out.append(struct.pack("<I", len(aliases or {})))
        for alias, target in (aliases or {}).items():
            out += [_text(alias), _text(target)]
    return b"".join(out)


def write_model_bin(path: Path, variables: Mapping[str, tuple[str, np.ndarray]], **kwargs: object) -> Path:
    path.write_bytes(model_bin(variables, **kwargs))  # type: ignore[arg-type]
    return path
