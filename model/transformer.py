"""The Transformer encoder-decoder of "Attention Is All You Need", written out.

Shapes: B batch, S source length, T target length (this call), P past length,
D d_model, H heads, K head dim (D / H), V vocabulary.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig

# One decoder layer's cached keys and values, each [B, H, P, K].
KV = tuple[Tensor, Tensor]


def sinusoidal_positions(length: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)). [L, D]

    "interleaved" stores each frequency's sine and cosine side by side, as the formula reads;
    "halves" stores every sine, then every cosine (Marian's table, the same values moved).
    """
    if layout == "halves":  # computed in float64, as Marian's table is
        pos64 = torch.arange(length, dtype=torch.float64)[:, None]
        angles64 = pos64 / torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
        return torch.cat((angles64.sin(), angles64.cos()), dim=-1).float()
    pos = torch.arange(length, dtype=torch.float32)  # [L]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    angles = pos[:, None] * inv_freq[None, :]  # [L, D/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # interleave sin, cos


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """softmax(Q Kᵀ / √d_k) V, with `mask` True where attention is allowed.

    q [B, H, T, K], k and v [B, H, S, K], mask broadcastable to [B, H, T, S].
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # [B, H, T, S]
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) @ v  # [B, H, T, K]


def _project(hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """hidden [.., D] @ weight[V, D]ᵀ (+ bias) -> [.., V], through a 2-D view (one Gemm when exported)."""
    flat = F.linear(hidden.reshape(-1, hidden.size(-1)), weight, bias)  # [N, V]
    return flat.view(*hidden.shape[:-1], flat.size(-1))


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W_O, head_i = Attention(Q W_Qi, K W_Ki, V W_Vi)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def _split_heads(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, K]
        return x.view(*x.shape[:-1], self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor) -> KV:
        """Keys and values of `x` [B, S, D], each [B, H, S, K]."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def forward(self, x: Tensor, kv: KV, mask: Tensor) -> Tensor:
        q = self._split_heads(self.q_proj(x))  # [B, H, T, K]
        heads = scaled_dot_product_attention(q, kv[0], kv[1], mask)  # [B, H, T, K]
        return self.out_proj(heads.transpose(1, 2).flatten(2))  # [B, T, D]


def activation(name: str) -> nn.Module:
    """The feed-forward non-linearity of ModelConfig.activation ("swish" is x·σ(x), Marian's name)."""
    return {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}[name]()


class FeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, act ReLU unless the config says otherwise.

    No dropout inside, as in the original design: on CPU the random mask of the
    4·d_model-wide hidden layer costs more than the whole attention block.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), activation(cfg.activation), nn.Linear(cfg.d_ff, cfg.d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Residual(nn.Module):
    """x + Dropout(Sublayer(LN(x))) when pre-norm; LN(x + Dropout(Sublayer(x))) when post-norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def pre(self, x: Tensor) -> Tensor:
        """What the sublayer sees."""
        return self.norm(x) if self.pre_norm else x

    def post(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        y = x + self.dropout(sublayer_out)
        return y if self.pre_norm else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.attn_res = Residual(cfg)
        self.ffn_res = Residual(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.attn_res.pre(x)
        x = self.attn_res.post(x, self.self_attn(h, self.self_attn.project_kv(h), mask))
        return self.ffn_res.post(x, self.ffn(self.ffn_res.pre(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg)
        self.cross_attn = MultiHeadAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.self_res = Residual(cfg)
        self.cross_res = Residual(cfg)
        self.ffn_res = Residual(cfg)

    def forward(
        self, x: Tensor, past: KV | None, self_mask: Tensor, cross: KV, cross_mask: Tensor
    ) -> tuple[Tensor, KV]:
        h = self.self_res.pre(x)
        k, v = self.self_attn.project_kv(h)  # [B, H, T, K]
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # [B, H, P+T, K]
        x = self.self_res.post(x, self.self_attn(h, (k, v), self_mask))
        x = self.cross_res.post(x, self.cross_attn(self.cross_res.pre(x), cross, cross_mask))
        return self.ffn_res.post(x, self.ffn(self.ffn_res.pre(x))), (k, v)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # The decoder's (and, shared, the encoder's) table; a separate source table when not shared.
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.src_embed = None if cfg.shared_embeddings else nn.Embedding(cfg.vocab_size, cfg.d_model, cfg.pad_id)
        self.output_proj = None if cfg.tied_output else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.logits_bias: Tensor | None
        self.register_buffer("logits_bias", torch.zeros(cfg.vocab_size) if cfg.output_bias else None)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm stacks end with a LayerNorm; post-norm layers already end normalised.
        eps = cfg.layer_norm_eps
        self.encoder_norm = nn.LayerNorm(cfg.d_model, eps=eps) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model, eps=eps) if cfg.pre_norm else nn.Identity()
        if cfg.mlm_head:
            # BERT's MLM head (dense, GELU, LayerNorm) then the tied output projection.
            self.mlm_transform = nn.Sequential(
                nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.LayerNorm(cfg.d_model)
            )
            self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
            # BERT's pooler on <cls>, then a two-way classifier for next-sentence prediction.
            self.nsp_head = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.Tanh(), nn.Linear(cfg.d_model, 2))
        self.positions: Tensor
        table = sinusoidal_positions(cfg.max_positions, cfg.d_model, cfg.position_layout)
        self.register_buffer("positions", table, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.cfg.d_model) if self.cfg.scale_embedding else 1.0

    @property
    def source_embedding(self) -> nn.Embedding:
        return self.embed if self.src_embed is None else self.src_embed

    @property
    def output_weight(self) -> Tensor:
        """The output projection [V, D]: the decoder's embedding when tied."""
        return self.embed.weight if self.output_proj is None else self.output_proj.weight

    def _embed(self, table: nn.Embedding, ids: Tensor, offset: int | Tensor = 0) -> Tensor:
        """Embedding · √d_model (when scaled) + PE. ids [B, L] -> [B, L, D]"""
        length = ids.size(1)
        if isinstance(offset, int):
            pos = self.positions[offset : offset + length]
        else:  # a traced past length: gather instead of slicing with a Python int
            pos = self.positions.index_select(0, torch.arange(length, device=ids.device) + offset)
        return self.embed_dropout(table(ids) * self.embed_scale + pos)

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """src_ids [B, S], src_mask [B, S] (True on real tokens) -> hidden states [B, S, D]."""
        attn_mask = src_mask[:, None, None, :]  # [B, 1, 1, S]
        x = self._embed(self.source_embedding, src_ids)
        for layer in self.encoder:
            x = layer(x, attn_mask)
        return self.encoder_norm(x)

    def cross_kv(self, memory: Tensor) -> list[KV]:
        """Each decoder layer's cross-attention keys and values, computed once per sentence."""
        return [cast(DecoderLayer, layer).cross_attn.project_kv(memory) for layer in self.decoder]

    def decode_step(
        self, tgt_ids: Tensor, src_mask: Tensor, cross: list[KV], past: list[KV] | None = None
    ) -> tuple[Tensor, list[KV]]:
        """Decode T new target tokens after P cached ones.

        tgt_ids [B, T], src_mask [B, S], cross per layer ([B, H, S, K] x2), past per
        layer ([B, H, P, K] x2) or None for P = 0. Returns logits [B, T, V] and the
        present keys and values per layer ([B, H, P+T, K] x2).
        """
        past_len = 0 if past is None else past[0][0].size(2)
        t = tgt_ids.size(1)
        # Query i sits at absolute position past_len + i and may see keys 0..past_len + i.
        q_pos = torch.arange(t, device=tgt_ids.device)[:, None] + past_len  # [T, 1]
        k_pos = torch.arange(past_len + t, device=tgt_ids.device)[None, :]  # [1, P+T]
        self_mask = (k_pos <= q_pos)[None, None]  # [1, 1, T, P+T]
        cross_mask = src_mask[:, None, None, :]  # [B, 1, 1, S]
        x = self._embed(self.embed, tgt_ids, past_len)
        present: list[KV] = []
        for i, layer in enumerate(self.decoder):
            x, kv = layer(x, None if past is None else past[i], self_mask, cross[i], cross_mask)
            present.append(kv)
        return self.output_logits(self.decoder_norm(x)), present

    def output_logits(self, hidden: Tensor) -> Tensor:
        """The output projection (tied to the embedding unless configured apart). [.., D] -> [.., V]

        F.linear on a 2-D view exports as one Gemm(transB=1) that reads the embedding
        matrix itself, so exported graphs share it instead of storing a transposed copy.
        """
        return _project(hidden, self.output_weight, self.logits_bias)

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits [B, T, V] for source [B, S] and shifted target [B, T]."""
        src_mask = src_ids != self.cfg.pad_id
        memory = self.encode(src_ids, src_mask)
        logits, _ = self.decode_step(tgt_in, src_mask, self.cross_kv(memory))
        return logits

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Masked-LM logits [.., V] from encoder hidden states [.., D]."""
        return _project(self.mlm_transform(hidden), self.embed.weight) + self.mlm_bias

    def nsp_logits(self, hidden: Tensor) -> Tensor:
        """Next-sentence logits [B, 2] from the `<cls>` state at position 0 of [B, S, D]."""
        return self.nsp_head(hidden[:, 0])
