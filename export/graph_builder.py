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
from torch import Tensor, nn

from model.transformer import MultiHeadAttention, Residual
from service.graphs import OPSET

MS_DOMAIN = "com.microsoft"


class Builder:
    """Collects nodes and initializers under unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, value: Tensor | np.ndarray) -> str:
        array = value.detach().float().numpy() if isinstance(value, Tensor) else value
        self.initializers.append(numpy_helper.from_array(np.array(array, copy=True, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs: Any) -> list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(op_type), domain=domain, **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]

    def linear(self, x: str, module: nn.Module, prefix: str) -> str:
        """x [.., in] @ Wᵀ + b. Weights stored [in, out], the layout MatMul reads."""
        assert isinstance(module, nn.Linear)
        w = self.weight(f"{prefix}.weight_t", module.weight.detach().float().numpy().T)
        return self.one("Add", [self.one("MatMul", [x, w]), self.weight(f"{prefix}.bias", module.bias)])

    def shared_tables(self, embedding: Tensor, positions: Tensor, d_model: int) -> tuple[str, str, str]:
        """The tied embedding, the sinusoidal position table and √d_model, under the names every
        graph uses, so that the exporter stores each once (export/shared_weights.py)."""
        return (
            self.weight("model.embed.weight", embedding),
            self.weight("model.positions", positions),
            self.weight("sqrt_d", np.array(math.sqrt(d_model), np.float32)),
        )

    def layer_norm(self, x: str, norm: nn.Module, prefix: str) -> str:
        assert isinstance(norm, nn.LayerNorm)
        scale, shift = self.weight(f"{prefix}.weight", norm.weight), self.weight(f"{prefix}.bias", norm.bias)
        return self.one("LayerNormalization", [x, scale, shift], axis=-1, epsilon=float(norm.eps))


def attention_out(b: Builder, heads: str, attn: MultiHeadAttention, prefix: str) -> str:
    return b.linear(heads, attn.out_proj, f"{prefix}.out_proj")


def residual(b: Builder, x: str, sublayer: str, res: Residual, prefix: str) -> str:
    """Pre-norm: x + f(LN x) (LN applied by the caller); post-norm: LN(x + f(x))."""
    y = b.one("Add", [x, sublayer])
    return y if res.pre_norm else b.layer_norm(y, res.norm, f"{prefix}.norm")


def pre(b: Builder, x: str, res: Residual, prefix: str) -> str:
    return b.layer_norm(x, res.norm, f"{prefix}.norm") if res.pre_norm else x


def self_attention(b: Builder, h: str, attn: MultiHeadAttention, prefix: str, heads: int, **inputs: str) -> list[str]:
    """One fused self-attention: Q, K and V from a single MatMul, then MultiHeadAttention.

    `inputs` names optional MultiHeadAttention inputs (key_padding_mask, past_key, past_value);
    returns its outputs: [attention] or, with a past, [attention, present_key, present_value].
    """
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    w_qkv = np.concatenate([m.weight.detach().float().numpy().T for m in projections], axis=1)
    b_qkv = np.concatenate([m.bias.detach().float().numpy() for m in projections])
    qkv = b.one("MatMul", [h, b.weight(f"{prefix}.qkv.weight_t", w_qkv)])  # [B, L, 3D]
    q, k, v = b.op("Split", [qkv], outputs=3, axis=2)
    order = ("key_padding_mask", "attention_bias", "past_key", "past_value")
    optional = [inputs.get(name, "") for name in order]
    while optional and not optional[-1]:
        optional.pop()
    outputs = 3 if "past_key" in inputs else 1
    mha = [q, k, v, b.weight(f"{prefix}.qkv.bias", b_qkv), *optional]
    return b.op("MultiHeadAttention", mha, outputs=outputs, domain=MS_DOMAIN, num_heads=heads)


def make_model(
    b: Builder, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mtserve")
    onnx.checker.check_model(model, full_check=False)
    return model
