"""Names and dynamic axes of the exported graphs, in one place (optimum-style: name -> {axis: symbol}).

Torch-free: the exporter writes graphs with these names, the runtime feeds them.
"""

from __future__ import annotations

from dataclasses import dataclass

Axes = dict[int, str]
OPSET = 17
MAX_BEAM = 8
# The decoder step also returns each row's best DECODER_TOP_K log-probs: a beam of K needs 2K.
DECODER_TOP_K = 2 * MAX_BEAM


@dataclass(frozen=True)
class GraphSpec:
    inputs: dict[str, Axes]
    outputs: dict[str, Axes]


def _per_layer(prefix: str, layers: int, axes: Axes) -> dict[str, Axes]:
    return {f"{prefix}_{kind}.{i}": axes for i in range(layers) for kind in ("key", "value")}


def encoder_spec(decoder_layers: int) -> GraphSpec:
    """input_ids, attention_mask [B, S] -> hidden_states [B, S, D], cross K/V [B, H, S, K] per layer."""
    return GraphSpec(
        inputs={"input_ids": {0: "batch", 1: "src_len"}, "attention_mask": {0: "batch", 1: "src_len"}},
        outputs={
            "hidden_states": {0: "batch", 1: "src_len"},
            **_per_layer("cross", decoder_layers, {0: "batch", 2: "src_len"}),
        },
    )


# The decoder step's self-attention cache inputs (service/runtime/kv_cache.py).
PAST_LENGTH = "past_sequence_length"  # int32 scalar: positions already in the cache, this token's position
BEAM_WIDTH = "beam_width"  # int32 [1]: rows per sentence
CACHE_INDIRECTION = "cache_indirection"  # int32 [N, beam_width, capacity]: the beam holding each position


ALIGNMENT = "alignment"  # float [B, S]: a step's cross-attention over the source, where the graph has it


def decoder_spec(decoder_layers: int, alignment: bool = False) -> GraphSpec:
    """Last tokens [B, 1], source mask [N, S], the cache's length, beam width and indirection,
    past K/V [B, H, capacity, K], cross K/V [N, H, S, K] ->
    log_probs [B, V], the best DECODER_TOP_K of them with their ids, EOS's log-prob [B], and
    present K/V: the past buffers themselves, this step's keys and values written in place;
    with `alignment`, also each row's attention over its source (ModelConfig.alignment_heads).

    N sources, B a multiple of N: rows r·B/N to (r+1)·B/N - 1 are the beams of source r."""
    return GraphSpec(
        inputs={
            "input_ids": {0: "batch"},
            "attention_mask": {0: "sources", 1: "src_len"},
            PAST_LENGTH: {},
            BEAM_WIDTH: {},
            CACHE_INDIRECTION: {0: "sources", 1: "beam_width", 2: "capacity"},
            **_per_layer("past", decoder_layers, {0: "batch", 2: "capacity"}),
            **_per_layer("cross", decoder_layers, {0: "sources", 2: "src_len"}),
        },
        outputs={
            "log_probs": {0: "batch"},
            "top_log_probs": {0: "batch"},
            "top_ids": {0: "batch"},
            "eos_log_prob": {0: "batch"},
            **({ALIGNMENT: {0: "batch", 1: "src_len"}} if alignment else {}),
            **_per_layer("present", decoder_layers, {0: "batch", 2: "capacity"}),
        },
    )


def mlm_spec() -> GraphSpec:
    """hidden_states [B, S, D] -> logits [B, S, V]."""
    return GraphSpec(
        inputs={"hidden_states": {0: "batch", 1: "src_len"}}, outputs={"logits": {0: "batch", 1: "src_len"}}
    )


def dynamic_axes(spec: GraphSpec) -> dict[str, Axes]:
    return {**spec.inputs, **spec.outputs}
