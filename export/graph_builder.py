"""Graphs written directly in ONNX from a model's weights, with onnxruntime's fused attention.

Traced from PyTorch, attention becomes dozens of small nodes (head splits, transposes,
masks); here each attention is one `com.microsoft.MultiHeadAttention` node and the three
self-attention projections are one MatMul. Names and shapes follow service/graphs.py;
the exporter checks the outputs against PyTorch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.network import Attention, FeedForward, LayerNorm, Linear, Network, Residual
from service.graphs import BEAM_WIDTH, CACHE_INDIRECTION, OPSET, PAST_LENGTH

MS_DOMAIN = "com.microsoft"
ROW_SHAPE = "row_shape"  # [-1, D]: a decoder step's activations, one row per hypothesis


class Builder:
    """Collects nodes and initializers under unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._weights: set[str] = set()

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, value: np.ndarray) -> str:
        """An initializer named `name`; a second call with the same name reuses the first."""
        if name in self._weights:
            return name
        self._weights.add(name)
        self.initializers.append(numpy_helper.from_array(np.array(value, copy=True, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs: Any) -> list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(op_type), domain=domain, **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]

    def linear(self, x: str, module: Linear, prefix: str) -> str:
        """x [.., in] @ Wᵀ + b. Weights stored [in, out], the layout MatMul reads."""
        w = self.weight(f"{prefix}.weight_t", module.weight.T)
        return self.one("Add", [self.one("MatMul", [x, w]), self.weight(f"{prefix}.bias", module.bias)])

    def embed(self, ids: str, net: Network, source: bool, positions: str) -> str:
        """Embedding(ids) · √d_model (when the model scales) + positions, under the names every
        graph uses, so that the exporter stores each table once (export/shared_weights.py)."""
        own_table = source and net.source_embed is not None
        table = net.source_embedding if source else net.embed
        name = "model.src_embed.weight" if own_table else "model.embed.weight"
        x = self.one("Gather", [self.weight(name, table), ids])
        if net.cfg.scale_embedding:
            x = self.one("Mul", [x, self.weight("sqrt_d", np.array(math.sqrt(net.cfg.d_model), np.float32))])
        return self.one("Add", [x, positions])

    def positions(self, net: Network) -> str:
        return self.weight("model.positions", net.positions)

    def output_logits(self, hidden: str, net: Network) -> str:
        """hidden [B, D] -> logits [B, V]: one Gemm over the output projection (the embedding itself
        when tied), with the output bias as its third input when the model has one."""
        if net.output_proj is None:
            weight = self.weight("model.embed.weight", net.embed)
        else:
            weight = self.weight("model.output_proj.weight", net.output_proj)
        inputs = [hidden, weight]
        if net.logits_bias is not None:
            inputs.append(self.weight("model.logits_bias", net.logits_bias))
        return self.one("Gemm", inputs, transB=1)

    def activation(self, x: str, name: str) -> str:
        """The feed-forward non-linearity: Relu, Gelu (erf, onnxruntime's fused kernel) or x·σ(x)."""
        if name == "relu":
            return self.one("Relu", [x])
        if name == "gelu":
            return self.one("Gelu", [x], domain=MS_DOMAIN)
        return self.one("Mul", [x, self.one("Sigmoid", [x])])

    def feed_forward(self, h: str, ffn: FeedForward, activation: str, prefix: str) -> str:
        inner = self.activation(self.linear(h, ffn.inner, f"{prefix}.0"), activation)
        return self.linear(inner, ffn.outer, f"{prefix}.2")

    def layer_norm(self, x: str, norm: LayerNorm, prefix: str) -> str:
        scale, shift = self.weight(f"{prefix}.weight", norm.weight), self.weight(f"{prefix}.bias", norm.bias)
        return self.one("LayerNormalization", [x, scale, shift], axis=-1, epsilon=float(norm.eps))


def attention_out(b: Builder, heads: str, attn: Attention, prefix: str) -> str:
    return b.linear(heads, attn.out_proj, f"{prefix}.out_proj")


def residual(b: Builder, x: str, sublayer: str, res: Residual, prefix: str) -> str:
    """Pre-norm: x + f(LN x) (LN applied by the caller); post-norm: LN(x + f(x))."""
    y = b.one("Add", [x, sublayer])
    return y if res.pre_norm else b.layer_norm(y, res.norm, f"{prefix}.norm")


def pre(b: Builder, x: str, res: Residual, prefix: str) -> str:
    return b.layer_norm(x, res.norm, f"{prefix}.norm") if res.pre_norm else x


def _qkv(b: Builder, h: str, attn: Attention, prefix: str, step: bool = False) -> tuple[str, str, str, str]:
    """Q, K and V [B, L, D] from one MatMul, and their bias [3D], which the attention node adds; from
    a decoder step's rows h [B, D] (`step`), [B, 1, D] as the attention node takes them."""
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    w_qkv = np.concatenate([m.weight.T for m in projections], axis=1)
    b_qkv = np.concatenate([m.bias for m in projections])
    qkv = b.one("MatMul", [h, b.weight(f"{prefix}.qkv.weight_t", w_qkv)])  # [B, L, 3D]
    if step:
        qkv = b.one("Reshape", [qkv, b.weight("one_position", np.array([0, 1, -1], np.int64))])
    q, k, v = b.op("Split", [qkv], outputs=3, axis=2)
    return q, k, v, b.weight(f"{prefix}.qkv.bias", b_qkv)


def self_attention(b: Builder, h: str, attn: Attention, prefix: str, heads: int, key_padding_mask: str) -> str:
    """One fused self-attention over the whole sequence (the encoder's): [B, L, D] -> [B, L, D]."""
    q, k, v, bias = _qkv(b, h, attn, prefix)
    mha = [q, k, v, bias, key_padding_mask]
    return b.one("MultiHeadAttention", mha, domain=MS_DOMAIN, num_heads=heads)


def cached_self_attention(b: Builder, h: str, attn: Attention, prefix: str, heads: int, layer: int) -> str:
    """One decoder step's self-attention [B, D] -> [B, D] over a cache preallocated for the
    longest output: this step's key and value are written in place at position
    `past_sequence_length`, and each row reads its earlier positions from the beam that
    `cache_indirection` names, so that no step copies the cache (service/runtime/kv_cache.py).

    onnxruntime's DecoderMaskedMultiHeadAttention with a shared past/present buffer; the graph
    outputs present_key.i and present_value.i are its outputs, which the runtime binds to the
    very buffers it feeds as past_key.i and past_value.i.
    """
    q, k, v, bias = _qkv(b, h, attn, prefix, step=True)
    past = [f"past_key.{layer}", f"past_value.{layer}"]
    inputs = [q, k, v, "", "", *past, PAST_LENGTH, BEAM_WIDTH, CACHE_INDIRECTION, bias]
    outputs = [b.name("attention"), f"present_key.{layer}", f"present_value.{layer}"]
    b.nodes.append(
        helper.make_node(
            "DecoderMaskedMultiHeadAttention",
            inputs,
            outputs,
            name=b.name("DecoderMaskedMultiHeadAttention"),
            domain=MS_DOMAIN,
            num_heads=heads,
            past_present_share_buffer=1,
        )
    )
    rows = b.weight(ROW_SHAPE, np.array([-1, attn.out_proj.weight.shape[1]], np.int64))
    return b.one("Reshape", [outputs[0], rows])  # [B, D]


def make_model(
    b: Builder, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mtserve")
    onnx.checker.check_model(model, full_check=False)
    return model
