"""The fused alternative to the per-row int8 MatMuls: `python bench/matmul_nbits.py --out DIR [--model DIR]`.

export/quantize.py turns each MatMul into seven nodes (the row's range, its quantization, the
integer product, the rescaling). onnxruntime's `MatMulNBits` with 8-bit weights and
accuracy level 4 does the same work in one node: weights in blocks of --block-size along the
input axis, each with its own scale, and the activations quantized per row and block inside
the kernel, so no row depends on another. This writes a model directory whose graphs use it,
from the same checkpoint, so that bench/latency.py and bench/engines.py can compare the two:

    python bench/matmul_nbits.py --out runs/nbits
    python bench/latency.py --model artifacts/default runs/nbits
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export.exporter import export_graphs, mtserve_conventions  # noqa: E402
from export.quantize import untie_output_projection  # noqa: E402
from export.shared_weights import share_weights  # noqa: E402
from export.writer import graph_files, write_manifest  # noqa: E402
from model.artifacts import load_model_dir  # noqa: E402
from service import conventions as cv  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR, FILL_VOCAB_FILE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="a model directory with model.pt")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--block-size", type=int, default=32)
    args = parser.parse_args()
    model, sp = load_model_dir(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in (cv.TOKENIZER_FILE, FILL_VOCAB_FILE):
        if (args.model / name).exists():
            shutil.copyfile(args.model / name, args.out / name)
    conventions = mtserve_conventions(model, sp, args.out / cv.TOKENIZER_FILE)
    export_graphs(model, args.out)
    for name in graph_files(model.cfg):
        graph = onnx.load(str(args.out / name), load_external_data=True)
        untie_output_projection(graph)
        quantizer = MatMulNBitsQuantizer(graph, bits=8, block_size=args.block_size, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        fused = quantizer.model.model
        ops = collections.Counter(node.op_type for node in fused.graph.node)
        print(f"{name}: {len(fused.graph.node)} nodes, {ops['MatMulNBits']} MatMulNBits")
        onnx.save(fused, str(args.out / name))
    share_weights(args.out, graph_files(model.cfg), model.cfg.vocab_size)
    write_manifest(args.out, model.cfg, conventions, "int8")


if __name__ == "__main__":
    main()
