"""The architecture hyper-parameters, stored as config.json beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from service.conventions import EOS_ID, PAD_ID

Activation = Literal["relu", "gelu", "swish"]
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "swish")
# "interleaved": sin and cos of each frequency side by side (ours); "halves": every sine, then
# every cosine (Marian's table).
PositionLayout = Literal["interleaved", "halves"]
POSITION_LAYOUTS: tuple[str, ...] = ("interleaved", "halves")


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
    # Variants an imported model needs (export/marian.py); the defaults are mtserve's own design.
    activation: Activation = "relu"
    scale_embedding: bool = True  # embeddings times √d_model
    position_layout: PositionLayout = "interleaved"
    shared_embeddings: bool = True  # encoder and decoder read one table; else each its own
    tied_output: bool = True  # the output projection is the decoder's embedding
    output_bias: bool = False  # a bias on the output logits (Marian's final_logits_bias)
    layer_norm_eps: float = 1e-5
    mlm_head: bool = True  # the masked-LM and next-sentence heads
    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    never_generate: tuple[int, ...] = ()  # ids the decoder may never emit (Marian: its pad)
    # The decoder step's `alignment` output: the cross-attention of this layer (negative: from the
    # last), averaged over its first `alignment_heads` heads; 0 heads: no such output. What an
    # unknown output token is replaced from (CTranslate2's replace_unknowns, export/ctranslate2.py).
    alignment_layer: int = -1
    alignment_heads: int = 0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.position_layout not in POSITION_LAYOUTS:
            raise ValueError(f"position_layout {self.position_layout!r} is not one of {', '.join(POSITION_LAYOUTS)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.d_model % 2:
            raise ValueError("d_model must be even for sinusoidal positions")
        if not 0 <= self.alignment_heads <= self.n_heads:
            raise ValueError(f"alignment_heads {self.alignment_heads} is not within 0..n_heads ({self.n_heads})")
        if not -self.decoder_layers <= self.alignment_layer < self.decoder_layers:
            raise ValueError(f"alignment_layer {self.alignment_layer} is not a layer of {self.decoder_layers}")

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
        data["never_generate"] = tuple(data.get("never_generate", ()))
        return cls(**data)
