"""The architecture hyper-parameters, stored as config.json beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    pre_norm: bool = True
    max_positions: int = 1024
    # What the model translates: its languages (one decoder tag each) and its trained
    # (source, target) directions. Metadata for the exporter and the service.
    languages: tuple[str, ...] = ()
    directions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.d_model % 2:
            raise ValueError("d_model must be even for sinusoidal positions")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        data["languages"] = tuple(data.get("languages", ()))
        data["directions"] = tuple((s, t) for s, t in data.get("directions", ()))
        return cls(**data)
