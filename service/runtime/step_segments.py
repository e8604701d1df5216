"""The decoder step cut at its self-attention nodes, which the host then takes.

onnxruntime's DecoderMaskedMultiHeadAttention reads a row's earlier positions through the beam
indirection with three calls a position, and at a large batch that is a third of a step; the host's
kernel (_attention.c) reads them in vector loops, in about half the time (docs/BENCHMARKS.md). So
the step's graph is cut at each such node: segment i runs up to layer i's query, key and value,
the host attends over the cache (native.common_step.self_attention), and segment i + 1 goes on
from its output. Nodes that read no per-step input (constants cast to fp32, the source mask's
forms) are copied into each segment that needs them; any other tensor that a later segment reads
becomes an output of the segment that makes it and an input of the later one.

A graph is cut only where every self-attention node is one this kernel computes: the exporter's
(export/graph_builder.py, cached_self_attention), with no mask, no attention bias and no
attribute but its heads and the shared buffer. Any other step runs whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.graphs import BEAM_WIDTH, CACHE_INDIRECTION, PAST_LENGTH

ATTENTION_OP = "DecoderMaskedMultiHeadAttention"
MS_DOMAIN = "com.microsoft"
# The step's inputs that change from one step to the next: a node that reads none of them is a
# constant of the search (or of the model), cheap to copy into each segment that reads it.
_PER_STEP_INPUTS = ("input_ids", PAST_LENGTH, BEAM_WIDTH, CACHE_INDIRECTION)
_KNOWN_ATTRIBUTES = {"num_heads", "past_present_share_buffer"}


def host_attention_enabled(setting: str | None = None) -> bool:
    """MTSERVE_HOST_ATTENTION: "off" runs each step whole, its self-attention onnxruntime's; anything
    else cuts it where the C module is built (native.common_step)."""
    value = os.environ.get("MTSERVE_HOST_ATTENTION", "on") if setting is None else setting
    return value.strip().lower() != "off"


@dataclass(frozen=True)
class AttentionCut:
    """One self-attention node the host computes: its query, key and value (made by the segment
    before it), its output (read by the segment after), its cache's names and the biases it adds."""

    query: str
    key: str
    value: str
    output: str
    past: tuple[str, str]  # the key and value caches, as the step's inputs name them
    present: tuple[str, str]  # the same buffers, as its outputs name them
    bias: np.ndarray  # [3 * width] float32: the query's, key's and value's


@dataclass(frozen=True)
class StepSegments:
    """The segments' graphs in order (serialized ModelProtos, their external data where the step's
    is), the cut after each segment but the last, and the step's own inputs and outputs."""

    graphs: list[bytes]
    cuts: list[AttentionCut]
    inputs: list[str]
    outputs: list[str]


def split_step(path: Path) -> StepSegments | None:
    """The step at `path` cut at its self-attention nodes; None where it has none, or one the host's
    kernel does not compute, or a tensor crossing a cut whose type is unknown."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    nodes = list(graph.node)
    attention = [n for n in nodes if n.op_type == ATTENTION_OP]
    if not attention:
        return None
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: n for n in nodes for out in n.output}
    cuts = [_cut(n, initializers, producers, path.parent) for n in attention]
    if any(cut is None for cut in cuts):
        return None
    inputs = {i.name: i for i in graph.input}
    per_step = set(_PER_STEP_INPUTS) | {name for cut in cuts if cut for name in cut.past}
    constant = _constant_tensors(nodes, set(initializers) | (set(inputs) - per_step))
    segment_of: dict[str, int] = {}  # each tensor made by a placed node: its segment
    placed: list[list[onnx.NodeProto]] = [[] for _ in range(len(attention) + 1)]
    for node in nodes:
        reads = [segment_of[name] for name in node.input if name in segment_of]
        at = max(reads, default=0)
        if node.op_type == ATTENTION_OP:
            segment_of[node.output[0]] = at + 1  # its output is the next segment's input
        elif not all(out in constant for out in node.output):
            placed[at].append(node)
            segment_of.update((out, at) for out in node.output)
    if [segment_of[n.input[0]] for n in attention] != list(range(len(attention))):
        return None  # not one cut after each segment in turn
    types = _tensor_types(model)
    if any(inputs[name].type.tensor_type.elem_type != TensorProto.FLOAT for cut in cuts if cut for name in cut.past):
        return None  # the host's kernel reads and writes fp32 caches
    for node in attention:  # a contributed node's operands, which ONNX's inference may not reach: the cache's type
        types |= {name: TensorProto.FLOAT for name in (*node.input[:3], node.output[0])}
    order = {id(n): i for i, n in enumerate(nodes)}
    needs: list[set[str]] = []
    bodies: list[list[onnx.NodeProto]] = []
    for index, own in enumerate(placed):
        wanted = {name for n in own for name in n.input if name}
        if index < len(attention):
            wanted |= set(attention[index].input[:3])
        copied = _constant_ancestors(wanted, constant, producers)
        bodies.append(sorted([*copied, *own], key=lambda n: order[id(n)]))
        needs.append(wanted | {name for n in copied for name in n.input if name})
    made = [{out for n in body for out in n.output} for body in bodies]
    outputs = [o.name for o in graph.output]
    graphs = []
    for index, body in enumerate(bodies):
        outside = made[index] | set(inputs) | set(initializers)
        crossing_in = sorted(t for t in needs[index] if t not in outside)
        crossing_out = list(attention[index].input[:3]) if index < len(attention) else []
        crossing_out += sorted(
            t for later in needs[index + 1 :] for t in later if t in made[index] and t not in constant
        )
        crossing_out = list(dict.fromkeys(crossing_out))
        if any(t not in types for t in crossing_in + crossing_out):
            return None
        graph_inputs = [inputs[name] for name in inputs if name in needs[index]]
        graph_inputs += [helper.make_tensor_value_info(t, types[t], None) for t in crossing_in]
        graph_outputs = [helper.make_tensor_value_info(t, types[t], None) for t in crossing_out]
        graph_outputs += [o for o in graph.output if o.name in made[index]]
        used = {name for n in body for name in n.input}
        segment = helper.make_graph(
            body, f"{graph.name}_segment_{index}", graph_inputs, graph_outputs,
            [initializers[name] for name in initializers if name in used],
        )  # fmt: skip
        proto = helper.make_model(segment, opset_imports=model.opset_import, producer_name=model.producer_name)
        proto.ir_version = model.ir_version
        graphs.append(proto.SerializeToString())
    return StepSegments(graphs, [c for c in cuts if c is not None], list(inputs), outputs)


def _cut(
    node: onnx.NodeProto,
    initializers: dict[str, TensorProto],
    producers: dict[str, onnx.NodeProto],
    base: Path,
) -> AttentionCut | None:
    """The node as a cut, where it is the exporter's self-attention (a shared cache read through the
    beam indirection, its biases a constant); else None."""
    names = list(node.input) + [""] * (11 - len(node.input))
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (
        node.domain != MS_DOMAIN
        or len(node.input) != 11
        or len(node.output) != 3
        or not all(names[:3])
        or names[3] or names[4]
        or names[7:10] != [PAST_LENGTH, BEAM_WIDTH, CACHE_INDIRECTION]
        or set(attributes) - _KNOWN_ATTRIBUTES
        or attributes.get("past_present_share_buffer") != 1
    ):  # fmt: skip
        return None
    bias = _constant_value(names[10], initializers, producers, base)
    if bias is None or bias.ndim != 1 or len(bias) % 3:
        return None
    return AttentionCut(
        names[0], names[1], names[2], node.output[0], (names[5], names[6]), (node.output[1], node.output[2]),
        np.ascontiguousarray(bias, dtype=np.float32),
    )  # fmt: skip


def _constant_value(
    name: str, initializers: dict[str, TensorProto], producers: dict[str, onnx.NodeProto], base: Path
) -> np.ndarray | None:
    """An initializer's values, or those of a Cast of one (the exporter's fp16 weights); None else."""
    node = producers.get(name)
    if name not in initializers and node is not None and node.op_type == "Cast" and node.input[0] in initializers:
        name = node.input[0]
    if name not in initializers:
        return None
    return np.asarray(numpy_helper.to_array(initializers[name], base_dir=str(base)), dtype=np.float32)


def _constant_tensors(nodes: list[onnx.NodeProto], known: set[str]) -> set[str]:
    """The tensors made by nodes that read only `known` tensors (initializers and per-search inputs),
    directly or through other such nodes."""
    constant = set(known)
    for node in nodes:
        if node.op_type != ATTENTION_OP and all(not name or name in constant for name in node.input):
            constant.update(node.output)
    return constant - known


def _constant_ancestors(
    wanted: set[str], constant: set[str], producers: dict[str, onnx.NodeProto]
) -> list[onnx.NodeProto]:
    """The constant nodes that the tensors `wanted` come from, whole chains."""
    found: dict[int, onnx.NodeProto] = {}
    stack = [name for name in wanted if name in constant]
    while stack:
        node = producers[stack.pop()]
        if id(node) not in found:
            found[id(node)] = node
            stack.extend(name for name in node.input if name in constant)
    return list(found.values())


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's element type where ONNX's inference knows it (not always past a contributed
    node)."""
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {t.name: t.data_type for t in graph.initializer}
    return {name: kind for name, kind in types.items() if kind != TensorProto.UNDEFINED}
