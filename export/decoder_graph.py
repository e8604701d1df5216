"""The decoder step written directly as an ONNX graph (export/graph_builder.py).

Traced from PyTorch, one step is about 200 small nodes; at the batch sizes of a single
request that bookkeeping costs as much as the matrix products. Written out, it is about
80: the fused self-attention writes the new key and value into the preallocated cache in
place and reads each beam's history through the cache indirection, so no step copies or
reorders the cache. The activations are rows [B, D], so that onnxruntime joins each fp32 product
with its bias (and a ReLU) into one Gemm, which it does for two-dimensional products only; the
attention nodes take and give [B, 1, D] by reshapes that copy nothing. Inputs and outputs are
service/graphs.py's decoder_spec.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.graph_builder import (
    MS_DOMAIN,
    ROW_SHAPE,
    Builder,
    attention_out,
    cached_self_attention,
    make_model,
    pre,
    residual,
)
from export.network import DecoderLayer, Network
from model.config import ModelConfig
from service.graphs import ALIGNMENT, BEAM_WIDTH, CACHE_INDIRECTION, DECODER_TOP_K, PAST_LENGTH, decoder_spec


def _decoder_layer(
    b: Builder, x: str, layer: DecoderLayer, i: int, key_mask: str, by_sentence: str, cfg: ModelConfig
) -> str:
    """x [B, D] -> x; the layer's cache gets this step's key and value (present_key.i, present_value.i)."""
    p, heads = f"decoder.{i}", cfg.n_heads
    h = pre(b, x, layer.self_res, f"{p}.self_res")
    out = cached_self_attention(b, h, layer.self_attn, f"{p}.self_attn", heads, i)
    x = residual(b, x, attention_out(b, out, layer.self_attn, f"{p}.self_attn"), layer.self_res, f"{p}.self_res")

    ca = layer.cross_attn
    h = pre(b, x, layer.cross_res, f"{p}.cross_res")
    q = b.one("Reshape", [b.linear(h, ca.q_proj, f"{p}.cross_attn.q_proj"), by_sentence])  # [N, B/N, D]
    if cfg.alignment_heads and i == cfg.alignment_layer % cfg.decoder_layers:
        _alignment(b, q, f"cross_key.{i}", key_mask, cfg)
    mha = [q, f"cross_key.{i}", f"cross_value.{i}", "", key_mask]  # keys and values precomputed, [N, H, S, K]
    out = b.one("Reshape", [b.one("MultiHeadAttention", mha, domain=MS_DOMAIN, num_heads=heads), ROW_SHAPE])
    x = residual(b, x, attention_out(b, out, ca, f"{p}.cross_attn"), layer.cross_res, f"{p}.cross_res")

    h = pre(b, x, layer.ffn_res, f"{p}.ffn_res")
    return residual(b, x, b.feed_forward(h, layer.ffn, cfg.activation, f"{p}.ffn"), layer.ffn_res, f"{p}.ffn_res")


def _alignment(b: Builder, q: str, keys: str, key_mask: str, cfg: ModelConfig) -> None:
    """The graph output ALIGNMENT [B, S]: the attention probabilities of q [N, B/N, D] over the
    source keys [N, H, S, K], averaged over the first cfg.alignment_heads heads, as CTranslate2
    averages them for replace_unknowns. The fused attention node does not expose its weights, so
    these few heads are computed beside it."""
    heads, depth = cfg.alignment_heads, cfg.head_dim
    first = b.weight("alignment_first", np.array([0], np.int64))
    count = b.weight("alignment_heads", np.array([heads], np.int64))
    axis_1 = b.weight("alignment_axis", np.array([1], np.int64))
    split = b.weight("alignment_q_shape", np.array([0, 0, cfg.n_heads, depth], np.int64))
    per_head = b.one("Transpose", [b.one("Reshape", [q, split])], perm=[0, 2, 1, 3])  # [N, H, B/N, K]
    q_heads = b.one("Slice", [per_head, first, count, axis_1])  # [N, h, B/N, K]
    k_heads = b.one("Transpose", [b.one("Slice", [keys, first, count, axis_1])], perm=[0, 1, 3, 2])  # [N, h, K, S]
    scores = b.one("Mul", [b.one("MatMul", [q_heads, k_heads]),
                           b.weight("alignment_scale", np.array(depth**-0.5, np.float32))])  # fmt: skip
    real = b.one("Cast", [b.one("Unsqueeze", [key_mask, b.weight("alignment_mask_axes", np.array([1, 2], np.int64))])],
                 to=TensorProto.BOOL)  # fmt: skip
    masked = b.one("Where", [real, scores, b.weight("alignment_minus_inf", np.array(-np.inf, np.float32))])
    mean = b.one("ReduceMean", [b.one("Softmax", [masked], axis=-1)], axes=[1], keepdims=0)  # [N, B/N, S]
    b.nodes.append(helper.make_node("Flatten", [mean], [ALIGNMENT], axis=2))  # [B, S]


def build_decoder_step(net: Network) -> onnx.ModelProto:
    """The decoder step of service/graphs.py's decoder_spec, from the model's weights."""
    cfg = net.cfg
    spec = decoder_spec(cfg.decoder_layers, alignment=cfg.alignment_heads > 0)
    b = Builder()
    # The token [B, 1] and its position (the scalar past length, int32) index their tables
    # as they come: four reshaping and casting nodes fewer a step.
    position = b.one("Gather", [b.positions(net), PAST_LENGTH])  # [D]
    b.weight(ROW_SHAPE, np.array([-1, cfg.d_model], np.int64))
    x = b.one("Reshape", [b.embed("input_ids", net, False, position), ROW_SHAPE])  # [B, 1, D] -> [B, D]
    key_mask = b.one("Cast", ["attention_mask"], to=TensorProto.INT32)  # [N, S], 1 on real tokens
    # Cross-attention runs per sentence: the B/N rows (beams) of a sentence are its queries
    # over one copy of its source's keys and values, which are not repeated per beam.
    sentences = b.one("Shape", ["cross_key.0"], start=0, end=1)  # [1]: N
    d_model = b.weight("d_model", np.array([cfg.d_model], np.int64))
    by_sentence = b.one("Concat", [sentences, b.weight("minus_1", np.array([-1], np.int64)), d_model], axis=0)
    for i, layer in enumerate(net.decoder):
        x = _decoder_layer(b, x, layer, i, key_mask, by_sentence, cfg)
    if net.decoder_norm is not None:
        x = b.layer_norm(x, net.decoder_norm, "decoder_norm")
    logits = b.output_logits(x, net)  # [B, V]
    if cfg.never_generate:
        # -inf after the softmax, not renormalised: as transformers' bad-words processor scores them
        barred = np.zeros(cfg.vocab_size, np.float32)
        barred[list(cfg.never_generate)] = -np.inf
        normalised = b.one("LogSoftmax", [logits], axis=-1)
        b.nodes.append(helper.make_node("Add", [normalised, b.weight("never_generate", barred)], ["log_probs"]))
    else:
        b.nodes.append(helper.make_node("LogSoftmax", [logits], ["log_probs"], axis=-1))
    _top_k(b, "log_probs", cfg.vocab_size)
    eos = b.weight("eos_id", np.array(cfg.eos_id, np.int64))
    b.nodes.append(helper.make_node("Gather", ["log_probs", eos], ["eos_log_prob"], axis=1))
    inputs = [_value_info(name, axes, cfg) for name, axes in spec.inputs.items()]
    outputs = [_value_info(name, axes, cfg) for name, axes in spec.outputs.items()]
    return make_model(b, "decoder_step", inputs, outputs)


# The best DECODER_TOP_K of a row lie in the DECODER_TOP_K blocks with the highest maxima, so
# the row's top-k reads the blocks' maxima and then those blocks only: a full TopK over the
# vocabulary cost more than the output projection's softmax (docs/BENCHMARKS.md).
VOCAB_BLOCK = 32
# A vocabulary that VOCAB_BLOCK does not divide takes the nearest block size within these bounds
# that does (50,000 pieces: 25), rather than padding every row's scores to a multiple: the pad
# is a pass over all of them (3% of an Argos-shape greedy step).
VOCAB_BLOCK_RANGE = (16, 64)


def vocab_block(vocab_size: int) -> int:
    """The top-k's block size for a vocabulary: VOCAB_BLOCK, or the nearest divisor of the
    vocabulary within VOCAB_BLOCK_RANGE, or VOCAB_BLOCK with the scores padded when none is."""
    low, high = VOCAB_BLOCK_RANGE
    divisors = [size for size in range(low, high + 1) if vocab_size % size == 0]
    return min(divisors, key=lambda size: (abs(size - VOCAB_BLOCK), size)) if divisors else VOCAB_BLOCK


def _top_k(b: Builder, log_probs: str, vocab_size: int) -> None:
    """log_probs [B, V] -> top_log_probs, top_ids [B, DECODER_TOP_K]: best first, lower id first on ties."""
    block_size = vocab_block(vocab_size)
    blocks = -(-vocab_size // block_size)
    padding = blocks * block_size - vocab_size
    scores = log_probs
    if padding:  # -inf past the vocabulary: never chosen
        pads = b.weight("vocab_pads", np.array([0, 0, 0, padding], np.int64))
        scores = b.one("Pad", [scores, pads, b.weight("minus_inf", np.array(-np.inf, np.float32))])
    grouped = b.one("Reshape", [scores, b.weight("vocab_blocks", np.array([0, blocks, block_size], np.int64))])
    block_max = b.one("ReduceMax", [grouped], axes=[2], keepdims=0)  # [B, blocks]
    k_blocks = min(DECODER_TOP_K, blocks)
    _, best_blocks = b.op("TopK", [block_max, b.weight("k_blocks", np.array([k_blocks], np.int64))], outputs=2)
    # The chosen blocks in vocabulary order, so that equal scores still rank by lower id.
    in_order, _ = b.op("TopK", [best_blocks, "k_blocks"], outputs=2, largest=0)  # [B, k_blocks]
    block_index = b.one("Unsqueeze", [in_order, b.weight("axis_2", np.array([2], np.int64))])  # [B, k_blocks, 1]
    candidates = b.one("GatherND", [grouped, block_index], batch_dims=1)  # [B, k_blocks, block_size]
    flat = b.one("Reshape", [candidates, b.weight("candidates_shape", np.array([0, -1], np.int64))])
    k = b.weight("top_k", np.array([min(DECODER_TOP_K, vocab_size)], np.int64))
    b.nodes.append(helper.make_node("TopK", [flat, k], ["top_log_probs", "top_positions"], axis=-1))
    width = b.weight("vocab_block", np.array(block_size, np.int64))
    block = b.one("GatherElements", [in_order, b.one("Div", ["top_positions", width])], axis=1)
    offset = b.one("Mod", ["top_positions", width])
    b.nodes.append(helper.make_node("Add", [b.one("Mul", [block, width]), offset], ["top_ids"]))


def _value_info(name: str, axes: dict[int, str], cfg: ModelConfig) -> onnx.ValueInfoProto:
    """Declared type and shape of a graph input or output; dynamic axes by symbol."""
    int32 = {PAST_LENGTH, BEAM_WIDTH, CACHE_INDIRECTION}
    int64 = {"input_ids", "attention_mask", "top_ids"}
    fixed: dict[str, list[int | str | None]] = {
        "input_ids": [None, 1],
        "attention_mask": [None, None],
        PAST_LENGTH: [],
        BEAM_WIDTH: [1],
        CACHE_INDIRECTION: [None, None, None],
        "log_probs": [None, cfg.vocab_size],
        "top_log_probs": [None, DECODER_TOP_K],
        "top_ids": [None, DECODER_TOP_K],
        "eos_log_prob": [None],
        ALIGNMENT: [None, None],
    }
    dims = fixed.get(name, [None, cfg.n_heads, None, cfg.head_dim])
    shape = [axes.get(i, d) for i, d in enumerate(dims)]
    kind = TensorProto.INT32 if name in int32 else TensorProto.INT64 if name in int64 else TensorProto.FLOAT
    return helper.make_tensor_value_info(name, kind, shape)
