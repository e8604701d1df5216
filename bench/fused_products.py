"""What one fused node per int8 product would save, and why the runtime cannot serve it:
`python bench/fused_products.py --model DIR --out OUT`, then
`python bench/step_time.py --model DIR OUT --rows 5 --threads 1` or
`python bench/sentence_time.py --model OUT --threads 1`.

export/quantize.py scales each activation row by its own range before an int8 product: `Abs`,
`ReduceMax`, the step's `Mul`, the zero points' and the rows' `QuantizeLinear` (no `Abs` after a
ReLU, which the last one takes in), then the product, then the bias's `Add`, since onnxruntime's
kernel cannot add a bias before a per-row scale. onnxruntime's `DynamicQuantizeMatMul` does all of
it in one node, bias included, but with one scale and zero point for the whole tensor: every row of
a run takes the range of the widest, so a sentence's scores depend on the batch it runs in, which
the runtime does not allow (docs/DESIGN.md). This writes a copy of a model directory whose encoder
and decoder step take that node for every per-row product, to measure what a per-row fused product
would be worth; it is not a graph to serve.

With `--per-sentence BATCH`, the other half of the one way left to serve that node: OUT's decoder
step fuses each product of a constant weight (the encoder and a shortlist's product stay per row),
which is what a sentence alone would run, and BATCH's decoder step computes the same per sentence
(the `beam_width` rows of each) for a batch, in standard nodes: each sentence's range and zero
point, one `QuantizeLinear` over the batch with them, the integer product as floats (exact: its
sums stay under 2^24 with 7-bit weights), the zero point's share taken off with the weight's column
sums, then the fused node's scale and bias. A sentence's rows come out of BATCH the same to the bit
as out of OUT alone, so a runtime could serve OUT to a sentence alone and BATCH to a batch;
`python bench/step_time.py --model DIR OUT BATCH --rows R` measures what each costs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export.graph_builder import MS_DOMAIN  # noqa: E402
from export.quantize import NEVER_NEGATIVE, SIGNED, UINT8_MAX, WEIGHT_MAX  # noqa: E402
from service.graphs import BEAM_WIDTH  # noqa: E402
from service.manifest import MANIFEST_FILE, Manifest, load_manifest, sha256_file  # noqa: E402

FUSED = "DynamicQuantizeMatMul"
# A chain's zero point -> its codes' levels: the per-row graphs store the weights' column scales
# divided by them (export/quantize.py), where the fused node takes the scales themselves.
LEVELS = {grid.zero_point_name: grid.levels for grid in (SIGNED, NEVER_NEGATIVE)}
CODES = UINT8_MAX  # DynamicQuantizeMatMul's uint8 steps between a run's minimum and maximum (each taken with 0)


def _constant(name: str, producers: dict[str, onnx.NodeProto], constants: set[str]) -> bool:
    """A constant, or the Cast of one (float16 biases are stored that way)."""
    node = producers.get(name)
    return name in constants or (node is not None and node.op_type == "Cast" and node.input[0] in constants)


class _Product:
    """One per-row int8 product as export/quantize.py wrote it: its activation before quantization
    (a folded ReLU's input, with `relu`), weight codes, column scales and the bias added after it."""

    def __init__(self, node: onnx.NodeProto, graph: _Graph) -> None:
        quantize = graph.producers[node.input[0]]
        zero_points = graph.producers.get(quantize.input[2])
        point = zero_points.input[2] if zero_points is not None else quantize.input[2]
        if point not in LEVELS:
            raise SystemExit(f"{node.name}: zero point {point!r} is none of export/quantize.py's grids")
        self.node, self.levels, self.values, self.weight = node, LEVELS[point], quantize.input[0], node.input[1]
        row_range = graph.producers.get(node.input[2])
        self.relu = row_range is not None and row_range.op_type == "Max"  # a ReLU the quantization took in
        self.scale, self.output, self.bias = node.input[3], node.output[0], ""
        self.bias_add: onnx.NodeProto | None = None
        after = graph.readers.get(self.output, [])
        if len(after) == 1 and after[0].op_type == "Add":
            others = [name for name in after[0].input if name != self.output]
            if len(others) == 1 and _constant(others[0], graph.producers, graph.constants):
                self.bias, self.output, self.bias_add = others[0], after[0].output[0], after[0]


class _Graph:
    """A graph's per-row products, and the nodes that replace them."""

    def __init__(self, graph: onnx.GraphProto, base_dir: Path, constant_weights_only: bool) -> None:
        self.graph, self.base_dir = graph, base_dir
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.constants = set(self.initializers)
        self.producers = {output: node for node in graph.node for output in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.products: list[_Product] = []
        for node in graph.node:
            if node.op_type != "MatMulIntegerToFloat":
                continue
            quantize = self.producers.get(node.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[1] in self.constants:
                continue  # a constant activation scale: already per tensor
            if constant_weights_only and node.input[1] not in self.constants:
                continue  # the shortlist's product, whose weight is an input of the step
            self.products.append(_Product(node, self))
        self.replaced: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> the nodes in its place

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name], base_dir=str(self.base_dir))

    def constant(self, value: np.ndarray, name: str) -> str:
        if name not in self.initializers:
            tensor = numpy_helper.from_array(value, name)
            self.graph.initializer.append(tensor)
            self.initializers[name] = tensor
        return name

    def column_scales(self, product: _Product, before: list[onnx.NodeProto]) -> str:
        """The weight's column scales themselves (the per-row graphs store them times the grid's step)."""
        if product.scale in self.initializers:
            value = self.array(product.scale) * np.float32(product.levels)
            return self.constant(value.astype(np.float32), f"{product.scale}.fused")
        levels = self.constant(np.array(product.levels, np.float32), f"{product.scale}.levels")
        before.append(helper.make_node("Mul", [product.scale, levels], [f"{product.scale}.fused"]))
        return f"{product.scale}.fused"

    def replace(self, product: _Product, nodes: list[onnx.NodeProto]) -> None:
        self.replaced[id(product.node)] = nodes
        if product.bias_add is not None:
            self.replaced[id(product.bias_add)] = []

    def finish(self) -> None:
        """The graph's nodes with the replacements, less what fed only the replaced nodes."""
        nodes = [new for node in self.graph.node for new in self.replaced.get(id(node), [node])]
        wanted = {output.name for output in self.graph.output}
        while True:
            used = wanted | {name for node in nodes for name in node.input}
            kept = [node for node in nodes if any(name in used for name in node.output)]
            if len(kept) == len(nodes):
                break
            nodes = kept
        del self.graph.node[:]
        self.graph.node.extend(nodes)


def fuse_products(graph: onnx.GraphProto, base_dir: Path, constant_weights_only: bool = False) -> int:
    """Each per-row int8 product of `graph` (of a constant weight only, with `constant_weights_only`),
    with the bias added after it, as one fused node; the nodes that only fed them removed. Returns how
    many products it fused."""
    rewrite = _Graph(graph, base_dir, constant_weights_only)
    for product in rewrite.products:
        before: list[onnx.NodeProto] = []
        values = product.values
        if product.relu:
            before.append(helper.make_node("Relu", [values], [f"{values}.relu"]))
            values = f"{values}.relu"
        scales = rewrite.column_scales(product, before)
        inputs = [values, product.weight, scales, "", product.bias]  # no zero point: symmetric weights
        fused = helper.make_node(FUSED, inputs, [product.output], product.node.name, domain="com.microsoft")
        rewrite.replace(product, [*before, fused])
    rewrite.finish()
    return len(rewrite.products)


class _PerSentence:
    """Nodes that give each sentence's rows what `DynamicQuantizeMatMul` gives a run of those rows alone."""

    def __init__(self, rewrite: _Graph) -> None:
        self.rewrite = rewrite
        self.nodes: list[onnx.NodeProto] = []
        self.quantized: dict[tuple[str, bool], tuple[str, str, str | None]] = {}
        c = rewrite.constant
        self.one = c(np.array(1.0, np.float32), "per_sentence.one")
        self.codes = c(np.array(CODES, np.float32), "per_sentence.codes")
        # a row of zeros: the fused node takes a scale of 1; any scale gives its codes 0 and its product 0
        self.tiny = c(np.array(np.finfo(np.float32).tiny, np.float32), "per_sentence.tiny")
        self.last = c(np.array([1], np.int64), "per_sentence.axis_1")
        self.flat = c(np.array([-1], np.int64), "per_sentence.flat")
        self.column = c(np.array([-1, 1, 1], np.int64), "per_sentence.column")  # [N, 1, 1]
        self.zero = c(np.zeros(1, np.uint8), "per_sentence.zero")
        self.beams = "per_sentence.beams"  # [1] int64: a sentence's rows, made before the first product
        self.started = False

    def add(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], **attrs))
        return name

    def quantized_sentences(self, values: str, relu: bool, depth: int) -> tuple[str, str, str | None]:
        """`values`' uint8 codes in its own shape, each sentence's scale and float zero point [N, 1, 1]
        (None for a ReLU's, whose zero point is 0), as the fused node makes them for one run."""
        key = (values, relu)
        if key in self.quantized:
            return self.quantized[key]
        add, p = self.add, f"{values}.per_sentence"
        depth_name = self.rewrite.constant(np.array([depth], np.int64), f"per_sentence.depth_{depth}")
        width = add("Mul", [self.beams, depth_name], f"{p}.width")
        sentences = add("Reshape", [values, add("Concat", [self.flat, width], f"{p}.shape", axis=0)], f"{p}.rows")
        top = add("Relu", [add("ReduceMax", [sentences, self.last], f"{p}.max", keepdims=1)], f"{p}.top")  # [N, 1]
        if relu:  # the fused node would read the ReLU's output: its minimum is 0, its zero point 0
            spread, below = top, None
        else:
            lowest = add("ReduceMin", [sentences, self.last], f"{p}.min", keepdims=1)
            below = add("Relu", [add("Neg", [lowest], f"{p}.neg")], f"{p}.below")  # -min, taken with 0
            spread = add("Add", [top, below], f"{p}.spread")  # max - min
        scale = add("Max", [add("Div", [spread, self.codes], f"{p}.step"), self.tiny], f"{p}.scale")
        flat_scale = add("Reshape", [scale, self.flat], f"{p}.flat_scale")
        if below is None:
            zero_point = add("Expand", [self.zero, add("Shape", [flat_scale], f"{p}.sentences")], f"{p}.zero_point")
            float_zero = None
        else:
            rounded = add("Round", [add("Div", [below, scale], f"{p}.zero_float")], f"{p}.zero_rounded")  # <= 255
            code = add("Cast", [rounded], f"{p}.zero_u8", to=TensorProto.UINT8)
            zero_point = add("Reshape", [code, self.flat], f"{p}.zero_point")
            float_zero = add("Reshape", [rounded, self.column], f"{p}.zero_column")
        codes = add("QuantizeLinear", [sentences, flat_scale, zero_point], f"{p}.codes", axis=0)
        codes = add("Reshape", [codes, add("Shape", [values], f"{p}.values_shape")], f"{p}.q")
        self.quantized[key] = (codes, add("Reshape", [scale, self.column], f"{p}.scale_column"), float_zero)
        return self.quantized[key]

    def product(self, product: _Product) -> list[onnx.NodeProto]:
        rewrite, add, p = self.rewrite, self.add, f"{product.node.name}.per_sentence"
        self.nodes = []
        if not self.started:
            add("Cast", [BEAM_WIDTH], self.beams, to=TensorProto.INT64)
            self.started = True
        weight = rewrite.array(product.weight)
        depth, width = weight.shape
        if depth * CODES * WEIGHT_MAX >= 2**24:
            raise SystemExit(f"{product.node.name}: its integer sums could leave float32's exact integers")
        codes, scale, float_zero = self.quantized_sentences(product.values, product.relu, depth)
        columns = rewrite.column_scales(product, self.nodes)
        # the integer sums as floats: exact, since 255 * 63 * depth stays under 2^24 (checked above)
        sums = add("MatMulIntegerToFloat", [codes, product.weight, self.one, self.one], f"{p}.sums", domain=MS_DOMAIN)
        width_name = rewrite.constant(np.array([width], np.int64), f"per_sentence.width_{width}")
        shape = add("Concat", [self.flat, self.beams, width_name], f"{p}.shape", axis=0)
        by_sentence = add("Reshape", [sums, shape], f"{p}.by_sentence")  # [N, beams, width]
        if float_zero is not None:  # the zero point's share: its code times the weight's column sums
            column_sums = weight.astype(np.int64).sum(axis=0).astype(np.float32)
            sums_name = rewrite.constant(column_sums, f"{product.weight}.column_sums")
            share = add("Mul", [float_zero, sums_name], f"{p}.zero_share")
            by_sentence = add("Sub", [by_sentence, share], f"{p}.centred")
        scaled = add("Mul", [by_sentence, add("Mul", [scale, columns], f"{p}.multiplier")], f"{p}.scaled")
        if product.bias:
            scaled = add("Add", [scaled, product.bias], f"{p}.biased")
        shape = add("Shape", [sums], f"{p}.sums_shape")
        self.nodes.append(helper.make_node("Reshape", [scaled, shape], [product.output]))
        return self.nodes


def emulate_per_sentence(graph: onnx.GraphProto, base_dir: Path) -> int:
    """Each per-row product of a constant weight in decoder step `graph` computed for each sentence's
    `beam_width` rows as the fused node computes a run of those rows alone. Returns how many."""
    if BEAM_WIDTH not in {value.name for value in graph.input}:
        raise SystemExit(f"the graph has no {BEAM_WIDTH} input: only a decoder step's rows come by sentence")
    rewrite = _Graph(graph, base_dir, constant_weights_only=True)
    nodes = _PerSentence(rewrite)
    for product in rewrite.products:
        rewrite.replace(product, nodes.product(product))
    rewrite.finish()
    return len(rewrite.products)


def _write_copy(model_dir: Path, out: Path, graphs: dict[str, onnx.ModelProto]) -> None:
    """`model_dir` copied to `out` (replaced) with `graphs` written over its files of those names."""
    manifest = load_manifest(model_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    for name, model in graphs.items():
        onnx.save(model, str(out / name))
    hashes = {name: sha256_file(out / name) for name in manifest.files.values()}
    updated = Manifest.model_validate({**manifest.model_dump(), "sha256": hashes})
    (out / MANIFEST_FILE).write_text(updated.model_dump_json(indent=2) + "\n")


def _int8_graphs(model_dir: Path, roles: tuple[str, ...]) -> dict[str, onnx.ModelProto]:
    manifest = load_manifest(model_dir)
    if manifest.precision != "int8":
        raise SystemExit(f"{model_dir} holds {manifest.precision} graphs: only int8 products are fused")
    names = [manifest.files[role] for role in roles]
    return {name: onnx.load(str(model_dir / name), load_external_data=False) for name in names}


def write_fused(model_dir: Path, out: Path) -> dict[str, int]:
    """A copy of `model_dir` at `out` with its encoder and decoder step fused; the products fused per graph."""
    graphs = _int8_graphs(model_dir, ("encoder", "decoder"))
    fused = {name: fuse_products(model.graph, model_dir) for name, model in graphs.items()}
    if not any(fused.values()):
        raise SystemExit(f"{model_dir} has no int8 product scaled per row")
    _write_copy(model_dir, out, graphs)
    return fused


def write_per_sentence(model_dir: Path, alone: Path, batch: Path) -> int:
    """Copies of `model_dir`: at `alone` its decoder step with each product of a constant weight fused,
    at `batch` the same arithmetic per sentence for a batch (emulate_per_sentence). Returns how many
    products each rewrote."""
    ((name, fused),) = _int8_graphs(model_dir, ("decoder",)).items()
    emulated = onnx.ModelProto()
    emulated.CopyFrom(fused)
    count = fuse_products(fused.graph, model_dir, constant_weights_only=True)
    if not count:
        raise SystemExit(f"{model_dir} has no int8 product scaled per row")
    if emulate_per_sentence(emulated.graph, model_dir) != count:
        raise SystemExit(f"{model_dir}: the two rewrites found different products")
    _write_copy(model_dir, alone, {name: fused})
    _write_copy(model_dir, batch, {name: emulated})
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory with int8 graphs")
    parser.add_argument("--out", type=Path, required=True, help="where the copy goes (replaced)")
    parser.add_argument(
        "--per-sentence", type=Path, metavar="BATCH",
        help="OUT: the decoder step fused as a sentence alone would run it; BATCH: the same per sentence, for a batch",
    )  # fmt: skip
    args = parser.parse_args()
    if args.per_sentence is not None:
        count = write_per_sentence(args.model, args.out, args.per_sentence)
        print(f"decoder step: {count} products fused in {args.out}, the same per sentence in {args.per_sentence}")
        return
    for name, count in write_fused(args.model, args.out).items():
        print(f"{name}: {count} products fused")


if __name__ == "__main__":
    main()
