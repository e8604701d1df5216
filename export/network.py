"""The network's weights as numpy arrays, in model/transformer.py's layout: what the graph
builders read (export/graph_builder.py).

A trained model arrives as a PyTorch module (`from_module` in export/exporter.py); an imported
CTranslate2 model is read straight into this form, so that importing needs no torch. Names are
those of the module's state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from model.config import ModelConfig


class WeightError(ValueError):
    """A state array missing, or of a shape the configuration does not give it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


@dataclass(frozen=True)
class Linear:
    weight: np.ndarray  # [out, in], as nn.Linear stores it
    bias: np.ndarray  # [out]


@dataclass(frozen=True)
class LayerNorm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclass(frozen=True)
class Residual:
    pre_norm: bool
    norm: LayerNorm


@dataclass(frozen=True)
class Attention:
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    out_proj: Linear


@dataclass(frozen=True)
class FeedForward:
    inner: Linear  # d_model -> d_ff
    outer: Linear  # d_ff -> d_model


@dataclass(frozen=True)
class EncoderLayer:
    self_attn: Attention
    attn_res: Residual
    ffn: FeedForward
    ffn_res: Residual


@dataclass(frozen=True)
class DecoderLayer:
    self_attn: Attention
    self_res: Residual
    cross_attn: Attention
    cross_res: Residual
    ffn: FeedForward
    ffn_res: Residual


@dataclass(frozen=True)
class Network:
    cfg: ModelConfig
    embed: np.ndarray  # [V, D]: the decoder's table, and the encoder's when shared
    source_embed: np.ndarray | None  # [V, D] the encoder's own table, when not shared
    output_proj: np.ndarray | None  # [V, D], when not tied to `embed`
    logits_bias: np.ndarray | None  # [V]
    positions: np.ndarray  # [max_positions, D]
    encoder: tuple[EncoderLayer, ...]
    decoder: tuple[DecoderLayer, ...]
    encoder_norm: LayerNorm | None  # pre-norm stacks end with one
    decoder_norm: LayerNorm | None

    @property
    def source_embedding(self) -> np.ndarray:
        return self.embed if self.source_embed is None else self.source_embed


def network_from_state(cfg: ModelConfig, state: Mapping[str, np.ndarray], positions: np.ndarray) -> Network:
    """The network from state-dict arrays (model/transformer.py's names) and a position table.
    Raises WeightError naming the first array missing or misshapen; arrays of no part are ignored."""
    d, v = cfg.d_model, cfg.vocab_size

    def array(name: str, *shape: int) -> np.ndarray:
        if name not in state:
            raise WeightError(name, "missing")
        value = np.asarray(state[name], dtype=np.float32)
        if value.shape != shape:
            raise WeightError(name, f"shape {value.shape}, expected {shape}")
        return value

    def linear(prefix: str, out: int = d, inner: int = d) -> Linear:
        return Linear(array(f"{prefix}.weight", out, inner), array(f"{prefix}.bias", out))

    def norm(prefix: str) -> LayerNorm:
        return LayerNorm(array(f"{prefix}.weight", d), array(f"{prefix}.bias", d), cfg.layer_norm_eps)

    def residual(prefix: str) -> Residual:
        return Residual(cfg.pre_norm, norm(f"{prefix}.norm"))

    def attention(prefix: str) -> Attention:
        return Attention(*(linear(f"{prefix}.{p}") for p in ("q_proj", "k_proj", "v_proj", "out_proj")))

    def ffn(prefix: str) -> FeedForward:
        return FeedForward(linear(f"{prefix}.net.0", cfg.d_ff, d), linear(f"{prefix}.net.2", d, cfg.d_ff))

    encoder = tuple(
        EncoderLayer(attention(f"{p}.self_attn"), residual(f"{p}.attn_res"), ffn(f"{p}.ffn"), residual(f"{p}.ffn_res"))
        for p in (f"encoder.{i}" for i in range(cfg.encoder_layers))
    )
    decoder = tuple(
        DecoderLayer(
            attention(f"{p}.self_attn"),
            residual(f"{p}.self_res"),
            attention(f"{p}.cross_attn"),
            residual(f"{p}.cross_res"),
            ffn(f"{p}.ffn"),
            residual(f"{p}.ffn_res"),
        )
        for p in (f"decoder.{i}" for i in range(cfg.decoder_layers))
    )
    return Network(
        cfg=cfg,
        embed=array("embed.weight", v, d),
        source_embed=None if cfg.shared_embeddings else array("src_embed.weight", v, d),
        output_proj=None if cfg.tied_output else array("output_proj.weight", v, d),
        logits_bias=array("logits_bias", v) if cfg.output_bias else None,
        positions=_table(positions, cfg),
        encoder=encoder,
        decoder=decoder,
        encoder_norm=norm("encoder_norm") if cfg.pre_norm else None,
        decoder_norm=norm("decoder_norm") if cfg.pre_norm else None,
    )


def _table(positions: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    table = np.asarray(positions, dtype=np.float32)
    if table.shape != (cfg.max_positions, cfg.d_model):
        raise WeightError("positions", f"shape {table.shape}, expected {(cfg.max_positions, cfg.d_model)}")
    return table
