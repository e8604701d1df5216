"""int8 graphs whose results do not depend on the batch.

onnxruntime's dynamic quantization (`quantize_dynamic`) scales each activation tensor by
its range over the whole batch, so a sentence's translation changes with its neighbours.
Its block-quantized `MatMulNBits` scales per row but gains little over fp32 on large
batches. Here every MatMul with a constant weight becomes:

    s = max|x| over the row          (one scale per row: no other row takes part)     [.., 1]
    q = QuantizeLinear(x, s/127, z, block_size=K)               uint8, [.., K]
    y = MatMulIntegerToFloat(q, W8, s, w_scale/127, 128)       int32 products, [.., N]

with W8 the weights in int8 within ±63 (WEIGHT_BITS), one symmetric scale per output column.
The rows' scales go into one blocked QuantizeLinear (opset 21: one block a row), which divides
each value by its row's s/127 as it rounds, instead of a Div over the whole activation before
it; the zero points z, 128 per row, are a QuantizeLinear of s itself at the largest float
scale (s / FLT_MAX rounds to 0), since a blocked zero point must have the scales' shape.
Given an A scale of shape [.., 1], onnxruntime's kernel multiplies each row of the product by
it (after the per-column scales), so the row's range needs no node of its own. A ReLU's output
is never negative, so its s is `max x`, without the Abs, and its codes are x / s on all 255 steps
above a zero point of 0 (`NEVER_NEGATIVE`): twice as fine as the signed grid, which would leave
the codes below 128 unused (the committed model's log-probabilities come 3% closer to fp32's,
docs/BENCHMARKS.md). Where only products read it, the ReLU itself goes: QuantizeLinear at zero
point 0 saturates a negative value to code 0, which is the ReLU's, and s is max(max x, 0).
A row of zeros (or one the ReLU zeroes) has s = 0: x / 0 is NaN or -inf, which QuantizeLinear
clamps to a code like any other value, and the product times s is 0, the row's true product. A
floor under s would cost a node per activation.

Where calibration gave an activation's range r (export/calibrate.py: the largest |x| of any row
while the fp32 graphs translate sample sentences), its scale is that constant instead:

    q = QuantizeLinear(x, r/127, 128)                           uint8, [.., K]
    y = MatMulIntegerToFloat(q, W8, r/127, w_scale, 128, -, b)  [.., N]

Two nodes instead of six: at one sentence a step is mostly nodes of a few microseconds each.
A bias b that only the product reads becomes the kernel's own bias input, one node fewer again;
with a scale per row it cannot, since onnxruntime adds the bias before it multiplies the row by
its scale. No row depends on another either way; a row beyond the range saturates instead of
widening the scale (docs/BENCHMARKS.md measures both).
The product runs on onnxruntime's u8·s8 integer GEMM, whose int32 sums are exact, so a row's
result is the same whatever else is in the batch. On CPUs without VNNI that kernel adds pairs of
products in 16 bits first, which saturate with 8-bit weights (onnxruntime's documented u8·s8
caveat, which its own quantizer's `reduce_range` avoids the same way); at 7 bits they cannot.

Weights are rounded one input row at a time. Without calibration each to its nearest code. With
the calibration activations' Gram matrix XᵀX (export/calibrate.py), each row's rounding error is
spread over the rows not yet rounded so that X·W changes least (GPTQ, Frantar et al. 2022, on the
same codes and column scales). On the committed model that cuts the weights' error on the
products from 1.02% to 0.70%, and the int8 log-probabilities' distance from fp32 by a fifth
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from export.graph_builder import MS_DOMAIN
from export.shared_weights import EMBEDDING, OUTPUT_PROJECTION

INT8_MAX = 127
# Weights within ±63 (7 bits): a pair of u8·s8 products then stays within 2 · 255 · 63 = 32,130,
# inside the 16-bit sums of the AVX2 kernel (no VNNI), which at ±127 saturate. Measured on
# test2016 (docs/BENCHMARKS.md): the same BLEU as 8 bits on VNNI CPUs, and now on AVX2 ones too.
WEIGHT_BITS = 7
WEIGHT_MAX = 2 ** (WEIGHT_BITS - 1) - 1
ACTIVATION_ZERO_POINT = 128  # uint8 activations centred on 128: the operand order of the fast kernel
# A calibrated range of zero (an activation that was zero on every sample) must not give a zero scale.
SMALLEST_RANGE = 1e-30

UINT8_MAX = 255
# QuantizeLinear's block_size, which scales each row of an activation by its own range in one node.
ROW_QUANTIZE_OPSET = 21
LAST_AXIS = "int8.last_axis"
LARGEST_SCALE = "int8.largest_scale"  # s / FLT_MAX rounds to 0: the zero point's own code, per row
ZERO = "int8.zero"


@dataclass(frozen=True)
class _Grid:
    """How an activation's values map to uint8 codes: `levels` steps from `zero_point`'s code to the
    range. Signed values take 127 on each side of 128; a ReLU's output, never negative, takes all
    255 above 0, twice as fine. A pair of products stays within 2 · 255 · 63 either way."""

    levels: int
    zero_point: int

    @property
    def step(self) -> np.float32:  # the codes' step for rows divided by their range, as stored
        return np.float32(1.0 / self.levels)

    @property
    def step_name(self) -> str:
        return f"int8.inv_{self.levels}"

    @property
    def zero_point_name(self) -> str:
        return f"int8.zero_point_{self.zero_point}"


SIGNED = _Grid(INT8_MAX, ACTIVATION_ZERO_POINT)
NEVER_NEGATIVE = _Grid(UINT8_MAX, 0)


def untie_output_projection(graph: onnx.ModelProto) -> None:
    """Gemm(h, E[, bias], transB=1) -> MatMul(h, Eᵀ)[ + bias], the form the weight quantizer reads.

    The lookup keeps the full-precision embedding; the projection gets its own 8-bit copy.
    """
    inits = {i.name: i for i in graph.graph.initializer}
    nodes = graph.graph.node
    for node in list(nodes):
        if node.op_type != "Gemm" or node.input[1] not in (EMBEDDING, OUTPUT_PROJECTION):
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            continue
        transposed = EMBEDDING + ".T"
        if transposed not in inits:
            weight = numpy_helper.to_array(inits[node.input[1]]).astype("float32")
            inits[transposed] = numpy_helper.from_array(weight.T.copy(), transposed)
            graph.graph.initializer.append(inits[transposed])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        output = node.output[0]
        node.op_type = "MatMul"
        node.input[:] = [node.input[0], transposed]
        del node.attribute[:]
        if bias is not None:  # the bias after the product, as its own node
            node.output[0] = output + ".unbiased"
            position = list(nodes).index(node)
            add = onnx.helper.make_node("Add", [node.output[0], bias], [output], name=output + ".bias")
            nodes.insert(position + 1, add)
    projection = inits.get(OUTPUT_PROJECTION)
    if projection is not None and not any(OUTPUT_PROJECTION in n.input for n in graph.graph.node):
        graph.graph.initializer.remove(projection)


# Compensated rounding: the Gram matrix's diagonal is raised by this share of its mean, so that it
# inverts where calibration activations are nearly dependent (GPTQ's damping), ...
GRAM_DAMPING = 0.01
# ... and input rows are rounded in blocks of this many, whose errors reach later rows in one product.
ROUNDING_BLOCK = 128


def quantize_weight(
    weight: np.ndarray, top: int | None = None, gram: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float -> int8 [K, N] within ±top (default WEIGHT_MAX) and one scale per output column,
    symmetric. With `gram` [K, K], XᵀX of calibration activations X [rows, K], the rounding
    compensates its errors on X·W (compensated_codes); else each weight takes its nearest code."""
    codes, scale, _ = _rounded(weight, WEIGHT_MAX if top is None else top, gram)
    return codes, scale


def _rounded(weight: np.ndarray, top: int, gram: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """quantize_weight's codes and scales, and whether the rounding compensated (it falls back to
    the nearest codes where the Gram matrix does not factor)."""
    scale = np.abs(weight).max(axis=0) / top
    scale[scale == 0] = 1.0
    codes = None if gram is None else compensated_codes(weight, scale, top, gram)
    if codes is not None:
        return codes, scale.astype(np.float32), True
    return np.clip(np.rint(weight / scale), -top, top).astype(np.int8), scale.astype(np.float32), False


def compensated_codes(weight: np.ndarray, scale: np.ndarray, top: int, gram: np.ndarray) -> np.ndarray | None:
    """int8 codes of `weight` [K, N] at `scale` [N], rounded row after row with each row's error
    pushed onto the rows after it, weighted by how X's columns correlate (`gram` = XᵀX), so that
    ‖X·W − X·codes·scale‖ stays small where nearest rounding lets the errors add up. An input never
    active in calibration has no correlation: its row keeps its nearest codes and passes nothing on.
    None where the damped Gram matrix still does not factor."""
    k = len(weight)
    h = np.array(gram, dtype=np.float64)
    diagonal = np.arange(k)
    h[diagonal, diagonal] = np.where(h[diagonal, diagonal] > 0, h[diagonal, diagonal], 1.0)
    h[diagonal, diagonal] += GRAM_DAMPING * h[diagonal, diagonal].mean()
    try:
        # Upper Cholesky factor of the inverse: row i holds how row i's error moves the rows after it.
        factor = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        return None
    w = weight.astype(np.float64)  # [K, N], updated as rows are rounded
    codes = np.empty(w.shape, dtype=np.int8)
    for start in range(0, k, ROUNDING_BLOCK):
        end = min(start + ROUNDING_BLOCK, k)
        errors = np.empty((end - start, w.shape[1]))  # [block, N]
        for i in range(start, end):
            rounded = np.clip(np.rint(w[i] / scale), -top, top)
            codes[i] = rounded
            errors[i - start] = (w[i] - rounded * scale) / factor[i, i]
            w[i + 1 : end] -= np.outer(factor[i, i + 1 : end], errors[i - start])
        w[end:] -= factor[start:end, end:].T @ errors
    return codes


def _is_constant_matrix(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
    return weight is not None and len(weight.dims) == 2


def constant_matrix_inputs(graph: onnx.GraphProto) -> list[str]:
    """The activations the quantizer rewrites: what MatMuls with a constant 2-D weight read, once each."""
    weights = {i.name: i for i in graph.initializer}
    return list(dict.fromkeys(n.input[0] for n in graph.node if _is_constant_matrix(n, weights)))


@dataclass(frozen=True)
class _QuantizedWeight:
    """A weight's codes and column scales, and whether their rounding compensated."""

    codes: np.ndarray
    scale: np.ndarray
    compensated: bool


class _RowQuantizer:
    """Rewrites one graph's MatMuls; each activation is quantized once however many MatMuls read it:
    with the constant scale of its calibrated range where `ranges` has one, else per row."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        ranges: Mapping[str, float],
        grams: Mapping[str, np.ndarray],
        earlier: dict[str, _QuantizedWeight],
    ) -> None:
        self.graph = graph
        self.ranges = ranges
        self.grams = grams
        self.earlier = earlier  # weights the model's earlier graphs quantized, by their float values' digest
        self.weights = {i.name: i for i in graph.initializer}
        self.relu_inputs = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Relu"}  # never negative
        self.readers: dict[str, list[onnx.NodeProto]] = {}  # the graph's, as given (rewrite replaces its nodes)
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.folded_relus = self._relus_only_products_read()
        self.nodes: list[onnx.NodeProto] = []
        # activation -> (uint8 rows, the scale of A, whether that is each row's range [.., 1], grid)
        self.quantized_inputs: dict[str, tuple[str, str, bool, _Grid]] = {}
        self.column_scales: dict[str, np.ndarray] = {}  # weight -> its per-column scales
        self.stored_scales: set[str] = set()  # the scale initializers written so far
        self.constant_scales = 0
        self.compensated = 0  # weights rounded with their activation's Gram matrix
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"int8.{hint}_{self._count}"

    def _add(self, op_type: str, inputs: list[str], hint: str, domain: str = "", **attrs: Any) -> str:
        out = self._name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def _relus_only_products_read(self) -> set[str]:
        """The ReLU outputs that only MatMuls of a constant weight read (not a graph output): their
        products take the ReLU's input instead, which QuantizeLinear at zero point 0 clamps the same."""
        outputs = {output.name for output in self.graph.output}
        return {
            out
            for out in self.relu_inputs
            if out not in outputs
            and out not in self.ranges
            and all(_is_constant_matrix(n, self.weights) and n.input[0] == out for n in self.readers.get(out, []))
        }

    def _quantized_rows(self, x: str, depth: int) -> tuple[str, str, bool, _Grid]:
        if x in self.quantized_inputs:
            return self.quantized_inputs[x]
        grid = NEVER_NEGATIVE if x in self.relu_inputs else SIGNED
        if x in self.ranges:
            scale = self._name("scale")
            value = max(self.ranges[x], SMALLEST_RANGE) / grid.levels
            self.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), scale))
            q = self._add("QuantizeLinear", [x, scale, grid.zero_point_name], "q")
            self.quantized_inputs[x] = (q, scale, False, grid)
            self.constant_scales += 1
        else:
            values = self.relu_inputs[x] if x in self.folded_relus else x
            magnitudes = values if grid is NEVER_NEGATIVE else self._add("Abs", [x], "abs")
            row_range = self._add("ReduceMax", [magnitudes, LAST_AXIS], "row_range", keepdims=1)  # [.., 1]
            if values != x:  # the ReLU's input: a row with no positive value has the ReLU's range, 0
                row_range = self._add("Max", [row_range, ZERO], "row_range")
            scale = self._add("Mul", [row_range, grid.step_name], "row_scale")
            zero_points = self._add("QuantizeLinear", [row_range, LARGEST_SCALE, grid.zero_point_name], "zero_points")
            q = self._add("QuantizeLinear", [values, scale, zero_points], "q", axis=-1, block_size=depth)
            self.quantized_inputs[x] = (q, row_range, True, grid)
        return self.quantized_inputs[x]

    def _weight(self, name: str, per_row: bool, activation: str, grid: _Grid) -> tuple[str, str]:
        """The int8 weight's name and that of its per-column scales. For rows scaled by their range, the
        scales times the grid's step (1/127, 1/255) in float32: the multiplier onnxruntime made of them
        and a constant A scale of that step, so that each product is the same to the bit as a Mul by
        the range after it was. The
        rounding compensates errors on `activation` where calibration gave its Gram matrix."""
        if name not in self.column_scales:
            weight = numpy_helper.to_array(self.weights[name]).astype(np.float32)
            digest = hashlib.sha256(np.asarray(weight.shape).tobytes() + weight.tobytes()).hexdigest()
            done = self.earlier.get(digest)
            if done is None:
                done = _QuantizedWeight(*_rounded(weight, WEIGHT_MAX, self.grams.get(activation)))
                self.earlier[digest] = done
            self.column_scales[name] = done.scale
            self.compensated += done.compensated
            self.graph.initializer.append(numpy_helper.from_array(done.codes, f"{name}.int8"))
        scale_name = f"{name}.row_scale_{grid.levels}" if per_row else f"{name}.scale"
        if scale_name not in self.stored_scales:
            scale = self.column_scales[name]
            value = grid.step * scale if per_row else scale  # float32 products, as the kernel's
            self.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), scale_name))
            self.stored_scales.add(scale_name)
        return f"{name}.int8", scale_name

    def _bias_adds(self) -> dict[str, tuple[onnx.NodeProto, str]]:
        """MatMul output -> the Add of a constant bias (one value per column) that alone reads it, and
        the bias's name."""
        outputs = {output.name for output in self.graph.output}
        adds = {}
        for node in self.graph.node:
            if not _is_constant_matrix(node, self.weights) or node.output[0] in outputs:
                continue
            (add, *others) = self.readers.get(node.output[0], [None])
            if add is None or others or add.op_type != "Add":
                continue
            bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            if bias in self.weights and list(self.weights[bias].dims) == [self.weights[node.input[1]].dims[1]]:
                adds[node.output[0]] = (add, bias)
        return adds

    def rewrite(self) -> int:
        """Replaces the graph's nodes; returns how many MatMuls became int8. A bias added to a product
        becomes the product's own bias input: a node fewer, the sum made as the kernel scales."""
        converted = 0
        bias_adds = self._bias_adds()
        folded: set[int] = set()
        for node in self.graph.node:
            if id(node) in folded:
                continue
            if not _is_constant_matrix(node, self.weights):
                if not (node.op_type == "Relu" and node.output[0] in self.folded_relus):
                    self.nodes.append(node)
                continue
            depth = self.weights[node.input[1]].dims[0]
            rows, a_scale, per_row, grid = self._quantized_rows(node.input[0], depth)
            weight, b_scale = self._weight(node.input[1], per_row, node.input[0], grid)
            inputs, outputs = [rows, weight, a_scale, b_scale, grid.zero_point_name], list(node.output)
            # onnxruntime adds the bias before it multiplies by an A scale per row: only a constant one takes it
            if node.output[0] in bias_adds and not per_row:
                add, bias = bias_adds[node.output[0]]
                inputs, outputs = [*inputs, "", bias], list(add.output)  # no zero point of B: symmetric
                folded.add(id(add))
            self.nodes.append(
                helper.make_node("MatMulIntegerToFloat", inputs, outputs, name=node.name, domain=MS_DOMAIN)
            )
            converted += 1
        grids = {grid for *_, grid in self.quantized_inputs.values()}
        for grid in sorted(grids, key=lambda g: g.levels):
            self.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(grid.step), grid.step_name),
                    numpy_helper.from_array(np.array(grid.zero_point, np.uint8), grid.zero_point_name),
                ]
            )
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([-1], np.int64), LAST_AXIS),
                numpy_helper.from_array(np.array(np.finfo(np.float32).max, np.float32), LARGEST_SCALE),
                numpy_helper.from_array(np.array(0.0, np.float32), ZERO),
            ]
        )
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        used = {name for node in self.nodes for name in node.input}
        unused = [init for init in self.graph.initializer if init.name not in used]
        for init in unused:
            self.graph.initializer.remove(init)
        return converted


def _converted(graph: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`graph` at `opset` (ReduceMax's axes and Split's parts become inputs), with only its own
    declared shapes: the converter's inferred ones would pin axes that a later rewrite widens (the
    output layer's, which `mtserve shortlist` makes the batch's union)."""
    declared = list(graph.graph.value_info)
    converted = version_converter.convert_version(graph, opset)
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(declared)
    return converted


def _default_opset(graph: onnx.ModelProto) -> int:
    return next(opset.version for opset in graph.opset_import if opset.domain in ("", "ai.onnx"))


def quantize_int8(
    out: Path,
    graph_files: Sequence[str],
    ranges: Mapping[str, Mapping[str, float]] | None = None,
    grams: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, int]]:
    """Rewrite each graph in `out` with int8 MatMuls, each activation at the constant scale of its
    range in `ranges` (per graph file, by activation: export/calibrate.py), else scaled per row, and
    each weight rounded against its activation's Gram matrix in `grams` (same keys) where there is
    one, else to the nearest code. Returns per graph the MatMuls converted, the activations at a
    constant scale and the weights whose rounding compensated.

    A weight that several graphs read (the output projection, in the decoder step and the MLM
    head, under different names) takes the codes of the first graph that quantizes it in all of
    them, so that the model's weight file keeps one copy (export/shared_weights.py)."""
    converted = {}
    earlier: dict[str, _QuantizedWeight] = {}
    for name in graph_files:
        graph = onnx.load(str(out / name), load_external_data=True)
        if _default_opset(graph) < ROW_QUANTIZE_OPSET:
            graph = _converted(graph, ROW_QUANTIZE_OPSET)
        untie_output_projection(graph)
        grams_here = (grams or {}).get(name, {})
        quantizer = _RowQuantizer(graph.graph, (ranges or {}).get(name, {}), grams_here, earlier)
        converted[name] = {
            "matmuls": quantizer.rewrite(),
            "constant_scales": quantizer.constant_scales,
            "compensated_weights": quantizer.compensated,
        }
        if not any(opset.domain == MS_DOMAIN for opset in graph.opset_import):
            graph.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        onnx.checker.check_model(graph, full_check=False)
        onnx.save(graph, str(out / name))
    return converted
