"""int8 graphs whose results do not depend on the batch.

onnxruntime's dynamic quantization (`quantize_dynamic`) scales each activation tensor by
its range over the whole batch, so a sentence's translation changes with its neighbours.
Here the MatMul weights become 8-bit blocks of 32 along the input axis (`MatMulNBits`)
and, at accuracy level 4, onnxruntime quantizes the activations per row and block before
an int8 product (VNNI on this class of CPU): each row is scaled by its own values only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import numpy_helper

from export.shared_weights import EMBEDDING

BITS = 8
# One scale per 256 inputs (a whole row of a d_model-256 projection): measured on the default
# model against blocks of 32, as accurate and faster (docs/BENCHMARKS.md).
MAX_BLOCK_SIZE = 256
INT8_COMPUTE = 4  # MatMulNBits accuracy_level: int8 activations, int32 accumulation


def untie_output_projection(graph: onnx.ModelProto) -> None:
    """Gemm(h, E, transB=1) -> MatMul(h, Eᵀ), the form the weight quantizer reads.

    The lookup keeps the full-precision embedding; the projection gets its own 8-bit copy.
    """
    inits = {i.name: i for i in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type != "Gemm" or node.input[1] != EMBEDDING or len(node.input) > 2:
            continue
        transposed = EMBEDDING + ".T"
        if transposed not in inits:
            weight = numpy_helper.to_array(inits[EMBEDDING]).astype("float32")
            inits[transposed] = numpy_helper.from_array(weight.T.copy(), transposed)
            graph.graph.initializer.append(inits[transposed])
        node.op_type = "MatMul"
        node.input[1] = transposed
        del node.attribute[:]


def quantize_int8(out: Path, graph_files: Sequence[str], d_model: int) -> None:
    """Rewrite each graph in `out` with 8-bit MatMul weights and int8 compute."""
    block_size = min(MAX_BLOCK_SIZE, 1 << (d_model.bit_length() - 1))  # a power of two, at most d_model
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for name in graph_files:
        graph = onnx.load(str(out / name), load_external_data=True)
        untie_output_projection(graph)
        quantizer = MatMulNBitsQuantizer(
            graph, bits=BITS, block_size=block_size, is_symmetric=True, accuracy_level=INT8_COMPUTE
        )
        quantizer.process()
        onnx.save(quantizer.model.model, str(out / name))
