"""The decoder step cut at its attention nodes, which the host then takes.

onnxruntime's DecoderMaskedMultiHeadAttention reads a row's earlier positions through the beam
indirection with three calls a position, and at a large batch that is a third of a step; its
MultiHeadAttention makes product calls for each sentence and head. The host's kernels
(_attention.c) take a row's positions in vector loops, in about half the time (docs/BENCHMARKS.md).
So the step's graph is cut at each such node: segment i runs up to cut i's inputs, the host attends
(native.common_step.self_attention over the cache, cross_attention over the encoder's keys and
values), and segment i + 1 goes on from its output. Nodes that read no per-step input (constants
cast to fp32, the source mask's forms) are copied into each segment that needs them; any other
tensor that a later segment reads becomes an output of the segment that makes it and an input of
the later one.

A graph is cut only where every self-attention node is one this kernel computes: the exporter's
(export/graph_builder.py, cached_self_attention), with no mask, no attention bias and no
attribute but its heads and the shared buffer. Any other step runs whole. A cross-attention node
is cut where it is the exporter's (cross_attention there): its query a Reshape of the rows into
sentences, its keys and values the step's inputs, its mask the source mask cast to int32, no bias,
and no attribute but its heads unless at the value the kernel computes (CROSS_ATTRIBUTE_VALUES);
else it stays in its segment. By default an int8 step keeps its cross-attention nodes in their
segments unless the host computes them as the node does, to the bit (host_attention).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.graphs import BEAM_WIDTH, CACHE_INDIRECTION, PAST_LENGTH
from service.runtime.cross_exact import takes_the_exact_kernel

ATTENTION_OP = "DecoderMaskedMultiHeadAttention"
CROSS_ATTENTION_OP = "MultiHeadAttention"
MS_DOMAIN = "com.microsoft"
# The step's inputs that change from one step to the next: a node that reads none of them is a
# constant of the search (or of the model), cheap to copy into each segment that reads it.
_PER_STEP_INPUTS = ("input_ids", PAST_LENGTH, BEAM_WIDTH, CACHE_INDIRECTION)
_KNOWN_ATTRIBUTES = {"num_heads", "past_present_share_buffer"}
# A cross-attention node's attributes besides num_heads, each at the one value the host's kernel
# computes: onnxruntime's optimizer writes `unidirectional` out at its default into the graphs it
# saves (the packed copies, packed.py), and the kernel lowers a masked position's score by 10,000.
CROSS_ATTRIBUTE_VALUES: dict[str, object] = {"unidirectional": 0, "mask_filter_value": -10000.0}
# Products of int8 operands: a step with any is int8, cut at its cross-attention only on request.
INTEGER_PRODUCTS = {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul"}


def host_attention(setting: str | None = None) -> Literal["off", "self", "on", "auto"]:
    """MTSERVE_HOST_ATTENTION: "off" runs each step whole, its attention onnxruntime's; "self" cuts it
    at its self-attention nodes, "on" at its cross-attention nodes too, where the C module is built
    (native.common_step); anything else ("auto", the default) at its cross-attention nodes where the
    host's exact kernel computes them (onnxruntime's AVX-512 order: the node's own bits on an AVX-512
    CPU, checked, and what an AVX-512 CPU's node gives on one without it; cross_exact.py) or the
    step's products are fp32. "auto" and "on" cut an encoder too where encoder_segments.py says. The
    host's own cross-attention kernel sums in another order than the node: an fp32 step translates
    test2016 as before, while an int8 step's rounding of the next products to codes turns a few
    translations, and its BLEU en→fr from 57.56 to 57.50 (docs/BENCHMARKS.md)."""
    value = (os.environ.get("MTSERVE_HOST_ATTENTION", "auto") if setting is None else setting).strip().lower()
    if value == "off":
        return "off"
    if value == "self":
        return "self"
    return "on" if value == "on" else "auto"


class GraphArg(NamedTuple):
    """An input or output of a cut graph, by name: what the runtime reads of an InferenceSession's
    (SegmentedSession, SegmentedEncoder)."""

    name: str


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

    @property
    def made(self) -> tuple[str, ...]:
        """The tensors the segment before the cut makes for it."""
        return (self.query, self.key, self.value)


@dataclass(frozen=True)
class CrossAttentionCut:
    """One cross-attention node the host computes: its query's rows (made by the segment before it,
    [rows, width], before the node's Reshape into sentences), the step's inputs it reads (the
    encoder's keys and values, [sentences, heads, length, depth], and the source mask, int64
    [sentences, length], or None) and its output ([sentences, beams, width], read by the segment
    after)."""

    query: str
    key: str
    value: str
    mask: str | None
    output: str
    exact: bool  # the host's exact kernel computes it: the node's bits on an AVX-512 CPU (cross_exact.py)

    @property
    def made(self) -> tuple[str, ...]:
        return (self.query,)


Cut = AttentionCut | CrossAttentionCut


@dataclass(frozen=True)
class StepSegments:
    """The segments' graphs in order (serialized ModelProtos, their external data where the step's
    is), the cut after each segment but the last, and the step's own inputs and outputs."""

    graphs: list[bytes]
    cuts: list[Cut]
    inputs: list[str]
    outputs: list[str]


def split_step(path: Path, cross: Literal["self", "on", "auto"] = "on") -> StepSegments | None:
    """The step at `path` cut at its attention nodes: its self-attention nodes, and its cross-attention
    nodes too where `cross` is "on", or "auto" and the host's exact kernel gives the node's bits or no
    product of the step is int8 (host_attention);
    None where it has no self-attention node, or one the host's kernel does not compute, or a tensor
    crossing a cut whose type is unknown."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    nodes = list(graph.node)
    fp32 = not any(n.op_type in INTEGER_PRODUCTS for n in nodes)
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    producers = {out: n for n in nodes for out in n.output}
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    if not any(n.op_type == ATTENTION_OP for n in nodes):
        return None
    cut_of: dict[int, Cut] = {}
    for node in nodes:
        if node.op_type == ATTENTION_OP:
            found: Cut | None = _cut(node, initializers, producers, path.parent)
            if found is None:
                return None
            cut_of[id(node)] = found
        elif cross != "self" and node.op_type == CROSS_ATTENTION_OP:
            crossing = _cross_cut(node, inputs, producers, readers)
            if crossing is not None and (cross == "on" or fp32 or crossing.exact):
                cut_of[id(node)] = crossing
    attention = [n for n in nodes if id(n) in cut_of]
    cuts = [cut_of[id(n)] for n in attention]
    dropped = {producers[n.input[0]].output[0] for n in attention if isinstance(cut_of[id(n)], CrossAttentionCut)}
    caches = {name for cut in cuts if isinstance(cut, AttentionCut) for name in cut.past}
    if any(inputs[name].type.tensor_type.elem_type != TensorProto.FLOAT for name in caches):
        return None  # the host's kernel reads and writes fp32 caches (a cross-attention's keys: _cross_cut)
    graphs = segment_graphs(model, cut_of, dropped, set(_PER_STEP_INPUTS) | caches)
    if graphs is None:
        return None
    return StepSegments(graphs, cuts, list(inputs), [o.name for o in model.graph.output])


class HostCut(Protocol):
    """What segment_graphs needs of a node the host computes: the tensors the segment before it makes
    for it, and its output, which the segment after it reads."""

    @property
    def made(self) -> tuple[str, ...]: ...

    @property
    def output(self) -> str: ...


def segment_graphs(
    model: onnx.ModelProto, cut_of: Mapping[int, HostCut], dropped: set[str], varying: set[str]
) -> list[bytes] | None:
    """`model`'s graph cut at the nodes of `cut_of` (by id): segment i runs up to cut i's inputs, and
    segment i + 1 goes on from its output. `dropped` are tensors the host reads in another form than
    they are made (a cross-attention's reshaped query), so no node makes them; `varying` the graph's
    inputs that change from one run to the next (the rest, with the initializers, make constants,
    copied into each segment that needs them). The segments' serialized graphs, their external data
    where the model's is; None where the cuts do not come one after each segment in turn, or a tensor
    crossing a cut has a type unknown."""
    graph = model.graph
    nodes = list(graph.node)
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    producers = {out: n for n in nodes for out in n.output}
    cuts = [cut_of[id(n)] for n in nodes if id(n) in cut_of]
    constant = _constant_tensors([n for n in nodes if id(n) not in cut_of], set(initializers) | (set(inputs) - varying))
    segment_of: dict[str, int] = {}  # each tensor made by a placed node: its segment
    placed: list[list[onnx.NodeProto]] = [[] for _ in range(len(cuts) + 1)]
    for node in nodes:
        reads = [segment_of[name] for name in node.input if name in segment_of]
        at = max(reads, default=0)
        if id(node) in cut_of:
            segment_of[node.output[0]] = at + 1  # its output is the next segment's input
        elif node.output[0] in dropped:
            segment_of[node.output[0]] = at
        elif not all(out in constant for out in node.output):
            placed[at].append(node)
            segment_of.update((out, at) for out in node.output)
    if [segment_of[cut.made[0]] for cut in cuts] != list(range(len(cuts))):
        return None  # not one cut after each segment in turn
    types = _tensor_types(model)
    for cut in cuts:  # a contributed node's operands, which ONNX's inference may not reach
        types |= {name: TensorProto.FLOAT for name in (*cut.made, cut.output)}
    order = {id(n): i for i, n in enumerate(nodes)}
    needs: list[set[str]] = []
    bodies: list[list[onnx.NodeProto]] = []
    for index, own in enumerate(placed):
        wanted = {name for n in own for name in n.input if name}
        if index < len(cuts):
            wanted |= set(cuts[index].made)
        copied = _constant_ancestors(wanted, constant, producers)
        bodies.append(sorted([*copied, *own], key=lambda n: order[id(n)]))
        needs.append(wanted | {name for n in copied for name in n.input if name})
    made = [{out for n in body for out in n.output} for body in bodies]
    graphs = []
    for index, body in enumerate(bodies):
        outside = made[index] | set(inputs) | set(initializers)
        crossing_in = sorted(t for t in needs[index] if t not in outside)
        crossing_out = list(cuts[index].made) if index < len(cuts) else []
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
    return graphs


def _cross_cut(
    node: onnx.NodeProto,
    inputs: dict[str, onnx.ValueInfoProto],
    producers: dict[str, onnx.NodeProto],
    readers: dict[str, int],
) -> CrossAttentionCut | None:
    """The node as a cut, where it is the exporter's cross-attention; else None (it stays in its
    segment)."""
    names = list(node.input) + [""] * (5 - len(node.input))
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    reshape = producers.get(names[0])
    if (
        node.domain != MS_DOMAIN
        or len(node.input) > 5
        or len(node.output) != 1
        or "num_heads" not in attributes
        or any(name not in CROSS_ATTRIBUTE_VALUES or value != CROSS_ATTRIBUTE_VALUES[name]
               for name, value in attributes.items() if name != "num_heads")
        or names[1] not in inputs or names[2] not in inputs
        or names[3]
        or reshape is None or reshape.op_type != "Reshape" or readers.get(names[0]) != 1
    ):  # fmt: skip
        return None
    if not all(
        len(inputs[n].type.tensor_type.shape.dim) == 4 and inputs[n].type.tensor_type.elem_type == TensorProto.FLOAT
        for n in names[1:3]
    ):
        return None  # the host's kernel reads fp32 keys and values of [sentences, heads, length, depth]
    mask = source_mask(names[4], inputs, producers) if names[4] else None
    if names[4] and mask is None:
        return None
    depth = inputs[names[1]].type.tensor_type.shape.dim[3].dim_value  # 0 where not fixed
    exact = depth > 0 and takes_the_exact_kernel(int(attributes["num_heads"]), depth)
    return CrossAttentionCut(reshape.input[0], names[1], names[2], mask, node.output[0], exact)


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
    bias = constant_value(names[10], initializers, producers, base)
    if bias is None or bias.ndim != 1 or len(bias) % 3:
        return None
    return AttentionCut(
        names[0], names[1], names[2], node.output[0], (names[5], names[6]), (node.output[1], node.output[2]),
        np.ascontiguousarray(bias, dtype=np.float32),
    )  # fmt: skip


def source_mask(name: str, inputs: dict[str, onnx.ValueInfoProto], producers: dict[str, onnx.NodeProto]) -> str | None:
    """The graph's int64 input that `name` casts to int32 (the exporter's source mask as an attention
    node reads it); None where `name` is made otherwise."""
    cast = producers.get(name)
    to = {a.name: helper.get_attribute_value(a) for a in cast.attribute}.get("to") if cast else None
    if cast is None or cast.op_type != "Cast" or to != TensorProto.INT32 or cast.input[0] not in inputs:
        return None
    if inputs[cast.input[0]].type.tensor_type.elem_type != TensorProto.INT64:
        return None
    return str(cast.input[0])


def constant_value(
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
        if all(not name or name in constant for name in node.input):
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
