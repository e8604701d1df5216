"""The encoder written directly as an ONNX graph (export/graph_builder.py).

Besides the hidden states it computes every decoder layer's cross-attention keys and values
with one MatMul, once per sentence. Inputs and outputs are service/graphs.py's encoder_spec.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.graph_builder import Builder, attention_out, make_model, pre, residual, self_attention
from export.network import EncoderLayer, Network
from service.graphs import encoder_spec


def _encoder_layer(b: Builder, x: str, layer: EncoderLayer, i: int, key_mask: str, heads: int, activation: str) -> str:
    """x [B, S, D] -> x."""
    p = f"encoder.{i}"
    h = pre(b, x, layer.attn_res, f"{p}.attn_res")
    out = self_attention(b, h, layer.self_attn, f"{p}.self_attn", heads, key_mask)
    x = residual(b, x, attention_out(b, out, layer.self_attn, f"{p}.self_attn"), layer.attn_res, f"{p}.attn_res")
    h = pre(b, x, layer.ffn_res, f"{p}.ffn_res")
    return residual(b, x, b.feed_forward(h, layer.ffn, activation, f"{p}.ffn"), layer.ffn_res, f"{p}.ffn_res")


def _cross_kv(b: Builder, memory: str, net: Network) -> list[str]:
    """Every decoder layer's cross keys and values [B, H, S, K], from one [D, 2·layers·D] MatMul."""
    cfg = net.cfg
    projections = [m for layer in net.decoder for m in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]
    weight = np.concatenate([m.weight.T for m in projections], axis=1)
    bias = np.concatenate([m.bias for m in projections])
    kv = b.one(
        "Add", [b.one("MatMul", [memory, b.weight("cross_kv.weight_t", weight)]), b.weight("cross_kv.bias", bias)]
    )
    heads = b.weight("split_heads", np.array([0, 0, cfg.n_heads, cfg.head_dim], np.int64))
    parts = b.op("Split", [kv], outputs=len(projections), axis=2)  # each [B, S, D]
    return [b.one("Transpose", [b.one("Reshape", [part, heads])], perm=[0, 2, 1, 3]) for part in parts]


def build_encoder(net: Network) -> onnx.ModelProto:
    """input_ids, attention_mask [B, S] -> hidden_states [B, S, D] and cross K/V per decoder layer."""
    cfg = net.cfg
    spec = encoder_spec(cfg.decoder_layers)
    b = Builder()
    length = b.one("Shape", ["input_ids"], start=1, end=2)  # [1]
    zero = b.weight("zero", np.array([0], np.int64))
    x = b.embed("input_ids", net, True, b.one("Slice", [b.positions(net), zero, length, zero]))  # [B, S, D]
    key_mask = b.one("Cast", ["attention_mask"], to=TensorProto.INT32)  # [B, S], 1 on real tokens
    for i, layer in enumerate(net.encoder):
        x = _encoder_layer(b, x, layer, i, key_mask, cfg.n_heads, cfg.activation)
    if net.encoder_norm is not None:
        x = b.layer_norm(x, net.encoder_norm, "encoder_norm")
    b.nodes.append(helper.make_node("Identity", [x], ["hidden_states"]))
    cross_names = [n for n in spec.outputs if n.startswith("cross_")]
    for name, tensor in zip(cross_names, _cross_kv(b, x, net), strict=True):
        b.nodes.append(helper.make_node("Identity", [tensor], [name]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "src_len"]) for n in spec.inputs]
    hidden = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", "src_len", cfg.d_model])
    cross = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", cfg.n_heads, "src_len", cfg.head_dim])
        for n in cross_names
    ]
    return make_model(b, "encoder", inputs, [hidden, *cross])
