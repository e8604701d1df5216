"""The encoder cut at its self-attention nodes, which the host computes in onnxruntime's AVX-512 order
of operations, so that a CPU without AVX-512 encodes as one with it does, to the bit.

onnxruntime's MultiHeadAttention sums a softmax's exps in 16 lanes on an AVX-512 CPU and in 8 on an
AVX2 one, so an AVX2 CPU's encoder states differ from an AVX-512 CPU's in their last bits (in 293 of
test2016's 1,000 English sources, docs/BENCHMARKS.md); an int8 graph then rounds some activations
to other codes, and a few sentences translate otherwise. The host's exact kernel
(_cross_attention_exact.c) computes the node as MLAS does on AVX-512, in AVX2's vectors where the
CPU has no other. The node adds its biases to the query, key and value ([B, S, D] each, one
rounding), lays the key and value out by head and attends over the source mask; the host does the
same (SegmentedEncoder).

The graph is cut at each node that is the exporter's (export/graph_builder.py, self_attention): its
query, key and value made by the graph, its bias a constant, its mask the encoder's int64
attention_mask cast to int32, no attribute but its heads unless at the value the kernel computes.
Anything else runs whole. By default (`auto`) an int8 encoder is cut on a CPU whose exact kernel
takes AVX2's vectors (exact_cross_attention); `on` cuts any encoder wherever the kernel runs (tests);
`off` and `self` never (host_attention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.runtime import native
from service.runtime.step_segments import (
    CROSS_ATTENTION_OP,
    CROSS_ATTRIBUTE_VALUES,
    INTEGER_PRODUCTS,
    MS_DOMAIN,
    GraphArg,
    constant_value,
    host_attention,
    segment_graphs,
    source_mask,
)

ENCODER_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class EncoderAttentionCut:
    """One encoder self-attention the host computes: its query, key and value ([B, S, D], made by the
    segment before it), the biases the node adds to them ([3D]), its heads, the int64 source mask it
    reads, and its output ([B, S, D], read by the segment after)."""

    query: str
    key: str
    value: str
    bias: np.ndarray
    heads: int
    mask: str
    output: str

    @property
    def made(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value)


@dataclass(frozen=True)
class EncoderSegments:
    """The segments' graphs in order, the cut after each but the last, the encoder's inputs and outputs."""

    graphs: list[bytes]
    cuts: list[EncoderAttentionCut]
    inputs: list[str]
    outputs: list[str]


def cuts_encoder(path: Path, setting: str | None = None) -> bool:
    """Whether the encoder at `path` is cut for the host's exact kernel (the module's docstring)."""
    kernels = native.common_step
    attending = host_attention(setting)
    if kernels is None or attending in ("off", "self") or not kernels.exact_cross_attention():
        return False
    if attending == "on":
        return True
    if kernels.exact_cross_attention() != kernels.EXACT_AVX2:
        return False  # an AVX-512 CPU: the node computes in that order itself
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in INTEGER_PRODUCTS for n in model.graph.node)


def split_encoder(path: Path) -> EncoderSegments | None:
    """The encoder at `path` cut at its self-attention nodes; None where it has none, or one the host's
    kernel does not compute, or a tensor crossing a cut whose type is unknown."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    nodes = list(graph.node)
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    producers = {out: n for n in nodes for out in n.output}
    cut_of: dict[int, EncoderAttentionCut] = {}
    for node in nodes:
        if node.op_type == CROSS_ATTENTION_OP and node.domain == MS_DOMAIN:
            found = _attention_cut(node, initializers, inputs, producers, path.parent)
            if found is None:
                return None
            cut_of[id(node)] = found
    if not cut_of or not set(ENCODER_INPUTS) <= set(inputs):
        return None
    graphs = segment_graphs(model, cut_of, set(), set(ENCODER_INPUTS))
    if graphs is None:
        return None
    cuts = [cut_of[id(n)] for n in nodes if id(n) in cut_of]
    return EncoderSegments(graphs, cuts, list(inputs), [o.name for o in graph.output])


def _attention_cut(
    node: onnx.NodeProto,
    initializers: dict[str, TensorProto],
    inputs: dict[str, onnx.ValueInfoProto],
    producers: dict[str, onnx.NodeProto],
    base: Path,
) -> EncoderAttentionCut | None:
    """The node as a cut, where it is the exporter's encoder self-attention; else None."""
    names = list(node.input) + [""] * (5 - len(node.input))
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (
        len(node.input) != 5
        or len(node.output) != 1
        or not all(names)
        or "num_heads" not in attributes
        or any(name not in CROSS_ATTRIBUTE_VALUES or value != CROSS_ATTRIBUTE_VALUES[name]
               for name, value in attributes.items() if name != "num_heads")
    ):  # fmt: skip
        return None
    mask = source_mask(names[4], inputs, producers)
    bias = constant_value(names[3], initializers, producers, base)
    heads = int(attributes["num_heads"])
    if mask is None or bias is None or bias.ndim != 1 or len(bias) % (3 * heads):
        return None
    return EncoderAttentionCut(names[0], names[1], names[2], bias, heads, mask, node.output[0])


class SegmentedEncoder:
    """The encoder's segments, each a session that `open_segment` makes of its serialized graph, with
    the host's exact attention between them, behind an InferenceSession's `run`."""

    def __init__(self, segments: EncoderSegments, open_segment: Callable[[bytes], ort.InferenceSession]) -> None:
        if native.common_step is None:
            raise RuntimeError(native.NOT_BUILT)
        self.attend = native.common_step.cross_attention
        self.exact_kernel = native.common_step.EXACT_CROSS_KERNEL
        self.segments = segments
        self.sessions = [open_segment(graph) for graph in segments.graphs]
        self._inputs = [[a.name for a in s.get_inputs()] for s in self.sessions]
        self._outputs = [[a.name for a in s.get_outputs()] for s in self.sessions]

    def get_inputs(self) -> list[GraphArg]:
        return [GraphArg(name) for name in self.segments.inputs]

    def get_outputs(self) -> list[GraphArg]:
        return [GraphArg(name) for name in self.segments.outputs]

    def run(
        self, outputs: Sequence[str], feeds: dict[str, np.ndarray], run_options: ort.RunOptions | None = None
    ) -> list[np.ndarray]:
        values: dict[str, Any] = dict(feeds)
        cuts = self.segments.cuts
        for index, session in enumerate(self.sessions):
            made = session.run(self._outputs[index], {name: values[name] for name in self._inputs[index]}, run_options)
            values.update(zip(self._outputs[index], made, strict=True))
            if index < len(cuts):
                values[cuts[index].output] = self._attention(cuts[index], values)
        return [values[name] for name in outputs]

    def _attention(self, cut: EncoderAttentionCut, values: dict[str, Any]) -> np.ndarray:
        """The node's output: the biases added as it adds them, the key and value by head, the exact
        kernel over the source mask."""
        query, key, value = (np.asarray(values[name], np.float32) for name in cut.made)
        sentences, length, width = query.shape
        depth = width // cut.heads

        def by_head(rows: np.ndarray) -> np.ndarray:  # [B, S, D] -> [B, H, S, D / H]
            return np.ascontiguousarray(rows.reshape(sentences, length, cut.heads, depth).transpose(0, 2, 1, 3))

        biased = np.ascontiguousarray(query + cut.bias[:width])
        if biased.size == 0:  # sources of no token (the node gives an empty output too)
            return biased
        keys, vectors = by_head(key + cut.bias[width : 2 * width]), by_head(value + cut.bias[2 * width :])
        mask = np.ascontiguousarray(values[cut.mask], np.int64)
        out = np.empty_like(biased)
        self.attend(biased, keys, vectors, mask, out, self.exact_kernel)
        return out
