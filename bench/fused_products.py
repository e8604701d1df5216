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
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export.quantize import NEVER_NEGATIVE, SIGNED  # noqa: E402
from service.manifest import MANIFEST_FILE, Manifest, load_manifest, sha256_file  # noqa: E402

FUSED = "DynamicQuantizeMatMul"
# A chain's zero point -> its codes' levels: the per-row graphs store the weights' column scales
# divided by them (export/quantize.py), where the fused node takes the scales themselves.
LEVELS = {grid.zero_point_name: grid.levels for grid in (SIGNED, NEVER_NEGATIVE)}


def _constant(name: str, producers: dict[str, onnx.NodeProto], constants: set[str]) -> bool:
    """A constant, or the Cast of one (float16 biases are stored that way)."""
    node = producers.get(name)
    return name in constants or (node is not None and node.op_type == "Cast" and node.input[0] in constants)


def fuse_products(graph: onnx.GraphProto, base_dir: Path) -> int:
    """Each per-row int8 product of `graph`, with the bias added after it, as one fused node; the
    nodes that only fed them removed. Returns how many products it fused."""
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    constants = set(initializers)
    producers = {output: node for node in graph.node for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> the nodes in its place
    for node in graph.node:
        if node.op_type != "MatMulIntegerToFloat":
            continue
        quantize = producers.get(node.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[1] in constants:
            continue  # a constant activation scale: already per tensor
        zero_points = producers.get(quantize.input[2])
        point = zero_points.input[2] if zero_points is not None else quantize.input[2]
        if point not in LEVELS:
            raise SystemExit(f"{node.name}: zero point {point!r} is none of export/quantize.py's grids")
        levels, scale, values = LEVELS[point], node.input[3], quantize.input[0]
        before: list[onnx.NodeProto] = []
        row_range = producers.get(node.input[2])
        if row_range is not None and row_range.op_type == "Max":  # a ReLU the quantization took in
            before.append(helper.make_node("Relu", [values], [f"{values}.relu"]))
            values = f"{values}.relu"
        if scale in initializers:
            value = numpy_helper.to_array(initializers[scale], base_dir=str(base_dir)) * np.float32(levels)
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), f"{scale}.fused"))
        else:  # the shortlist's scales, an input of the step
            graph.initializer.append(numpy_helper.from_array(np.array(levels, np.float32), f"{scale}.levels"))
            before.append(helper.make_node("Mul", [scale, f"{scale}.levels"], [f"{scale}.fused"]))
        output, bias = node.output[0], ""
        after = readers.get(output, [])
        if len(after) == 1 and after[0].op_type == "Add":
            others = [name for name in after[0].input if name != output]
            if len(others) == 1 and _constant(others[0], producers, constants):
                bias, output = others[0], after[0].output[0]
                replaced[id(after[0])] = []
        inputs = [values, node.input[1], f"{scale}.fused", "", bias]  # no zero point: symmetric weights
        fused = helper.make_node(FUSED, inputs, [output], node.name, domain="com.microsoft")
        replaced[id(node)] = [*before, fused]
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    wanted = {output.name for output in graph.output}
    while True:  # drop what fed only the replaced nodes
        used = wanted | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(name in used for name in node.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    return sum(1 for node in nodes if node.op_type == FUSED)


def write_fused(model_dir: Path, out: Path) -> dict[str, int]:
    """A copy of `model_dir` at `out` with its encoder and decoder step fused; the products fused per graph."""
    manifest = load_manifest(model_dir)
    if manifest.precision != "int8":
        raise SystemExit(f"{model_dir} holds {manifest.precision} graphs: only int8 products are fused")
    names = [manifest.files[role] for role in ("encoder", "decoder")]
    graphs = {name: onnx.load(str(model_dir / name), load_external_data=False) for name in names}
    fused = {name: fuse_products(model.graph, model_dir) for name, model in graphs.items()}
    if not any(fused.values()):
        raise SystemExit(f"{model_dir} has no int8 product scaled per row")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    for name, model in graphs.items():
        onnx.save(model, str(out / name))
    hashes = {name: sha256_file(out / name) for name in manifest.files.values()}
    updated = Manifest.model_validate({**manifest.model_dump(), "sha256": hashes})
    (out / MANIFEST_FILE).write_text(updated.model_dump_json(indent=2) + "\n")
    return fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory with int8 graphs")
    parser.add_argument("--out", type=Path, required=True, help="where the copy goes (replaced)")
    args = parser.parse_args()
    for name, count in write_fused(args.model, args.out).items():
        print(f"{name}: {count} products fused")


if __name__ == "__main__":
    main()
