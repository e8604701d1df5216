"""The decoder step written directly as an ONNX graph (export/graph_builder.py).

Traced from PyTorch, one step is about 200 small nodes; at the batch sizes of a single
request that bookkeeping costs as much as the matrix products. Written out, it is about
90: the fused self-attention also appends the new key and value to the cache, and the
activations stay [B, 1, D]. Inputs and outputs are service/graphs.py's decoder_spec.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.graph_builder import MS_DOMAIN, Builder, attention_out, make_model, pre, residual, self_attention
from model.config import ModelConfig
from model.transformer import DecoderLayer, Transformer
from service.conventions import EOS_ID
from service.graphs import DECODER_TOP_K, decoder_spec


def _decoder_layer(b: Builder, x: str, layer: DecoderLayer, i: int, key_mask: str, heads: int) -> tuple[str, str, str]:
    """x [B, 1, D] -> x, present key, present value."""
    p = f"decoder.{i}"
    h = pre(b, x, layer.self_res, f"{p}.self_res")
    past_k = b.one("Gather", [f"past_key.{i}", "beam_origin"], axis=0)  # rows follow their beam of origin
    past_v = b.one("Gather", [f"past_value.{i}", "beam_origin"], axis=0)
    out, present_k, present_v = self_attention(
        b, h, layer.self_attn, f"{p}.self_attn", heads, past_key=past_k, past_value=past_v
    )
    x = residual(b, x, attention_out(b, out, layer.self_attn, f"{p}.self_attn"), layer.self_res, f"{p}.self_res")

    ca = layer.cross_attn
    h = pre(b, x, layer.cross_res, f"{p}.cross_res")
    q = b.linear(h, ca.q_proj, f"{p}.cross_attn.q_proj")
    mha = [q, f"cross_key.{i}", f"cross_value.{i}", "", key_mask]  # keys and values precomputed, [B, H, S, K]
    out = b.one("MultiHeadAttention", mha, domain=MS_DOMAIN, num_heads=heads)
    x = residual(b, x, attention_out(b, out, ca, f"{p}.cross_attn"), layer.cross_res, f"{p}.cross_res")

    ffn = layer.ffn.net
    h = pre(b, x, layer.ffn_res, f"{p}.ffn_res")
    hidden = b.one("Relu", [b.linear(h, ffn[0], f"{p}.ffn.0")])
    x = residual(b, x, b.linear(hidden, ffn[2], f"{p}.ffn.2"), layer.ffn_res, f"{p}.ffn_res")
    return x, present_k, present_v


def build_decoder_step(model: Transformer) -> onnx.ModelProto:
    """The decoder step of service/graphs.py's decoder_spec, from the model's weights."""
    cfg = model.cfg
    spec = decoder_spec(cfg.decoder_layers)
    b = Builder()
    embedding, positions, sqrt_d = b.shared_tables(model.embed.weight, model.positions, cfg.d_model)
    ids = b.one("Squeeze", ["input_ids", b.weight("axis_1", np.array([1], np.int64))])  # [B]
    scaled = b.one("Mul", [b.one("Gather", [embedding, ids]), sqrt_d])  # [B, D]
    past_len = b.one("Shape", ["past_key.0"], start=2, end=3)  # [1]: this token's position
    x = b.one("Add", [scaled, b.one("Gather", [positions, past_len])])  # [B, D]
    x = b.one("Unsqueeze", [x, "axis_1"])  # [B, 1, D]
    key_mask = b.one("Cast", ["attention_mask"], to=TensorProto.INT32)  # [B, S], 1 on real tokens
    presents: list[str] = []
    for i, layer in enumerate(model.decoder):
        assert isinstance(layer, DecoderLayer)
        x, present_k, present_v = _decoder_layer(b, x, layer, i, key_mask, cfg.n_heads)
        presents += [present_k, present_v]
    if cfg.pre_norm:
        x = b.layer_norm(x, model.decoder_norm, "decoder_norm")
    hidden = b.one("Squeeze", [x, "axis_1"])  # [B, D]
    logits = b.one("Gemm", [hidden, embedding], transB=1)  # tied output projection, [B, V]
    b.nodes.append(helper.make_node("LogSoftmax", [logits], ["log_probs"], axis=-1))
    k = b.weight("top_k", np.array([DECODER_TOP_K], np.int64))
    b.nodes.append(helper.make_node("TopK", ["log_probs", k], ["top_log_probs", "top_ids"], axis=-1))
    eos = b.weight("eos_id", np.array(EOS_ID, np.int64))
    b.nodes.append(helper.make_node("Gather", ["log_probs", eos], ["eos_log_prob"], axis=1))
    for name, present in zip((n for n in spec.outputs if n.startswith("present_")), presents, strict=True):
        b.nodes.append(helper.make_node("Identity", [present], [name]))
    inputs = [_value_info(name, axes, cfg) for name, axes in spec.inputs.items()]
    outputs = [_value_info(name, axes, cfg) for name, axes in spec.outputs.items()]
    return make_model(b, "decoder_step", inputs, outputs)


def _value_info(name: str, axes: dict[int, str], cfg: ModelConfig) -> onnx.ValueInfoProto:
    """Declared type and shape of a graph input or output; dynamic axes by symbol."""
    ints = {"input_ids", "attention_mask", "beam_origin", "top_ids"}
    fixed: dict[str, list[int | str | None]] = {
        "input_ids": [None, 1],
        "attention_mask": [None, None],
        "beam_origin": [None],
        "log_probs": [None, cfg.vocab_size],
        "top_log_probs": [None, DECODER_TOP_K],
        "top_ids": [None, DECODER_TOP_K],
        "eos_log_prob": [None],
    }
    dims = fixed.get(name, [None, cfg.n_heads, None, cfg.head_dim])
    shape = [axes.get(i, d) for i, d in enumerate(dims)]
    return helper.make_tensor_value_info(name, TensorProto.INT64 if name in ints else TensorProto.FLOAT, shape)
