"""Names and dynamic axes of the exported graphs, in one place (optimum-style: name -> {axis: symbol}).

Torch-free: the exporter writes graphs with these names, the runtime feeds them.
"""

from __future__ import annotations

from dataclasses import dataclass

Axes = dict[int, str]
OPSET = 17


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


def decoder_spec(decoder_layers: int) -> GraphSpec:
    """Last tokens [B, 1], source mask [B, S], past K/V [B, H, P, K], cross K/V -> log_probs [B, V], present K/V."""
    return GraphSpec(
        inputs={
            "input_ids": {0: "batch"},
            "attention_mask": {0: "batch", 1: "src_len"},
            **_per_layer("past", decoder_layers, {0: "batch", 2: "past_len"}),
            **_per_layer("cross", decoder_layers, {0: "batch", 2: "src_len"}),
        },
        outputs={
            "log_probs": {0: "batch"},
            **_per_layer("present", decoder_layers, {0: "batch", 2: "past_len_plus_1"}),
        },
    )


def mlm_spec() -> GraphSpec:
    """hidden_states [B, S, D] -> logits [B, S, V]."""
    return GraphSpec(
        inputs={"hidden_states": {0: "batch", 1: "src_len"}}, outputs={"logits": {0: "batch", 1: "src_len"}}
    )


def dynamic_axes(spec: GraphSpec) -> dict[str, Axes]:
    return {**spec.inputs, **spec.outputs}
