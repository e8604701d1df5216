"""Store each distinct weight tensor once, in one file that every graph references.

The tied embedding is used by the encoder (lookup), the decoder (lookup and output
projection) and the MLM head (output projection). Stored inline it would be
written three times; here all graphs point at the same bytes of `weights.bin`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHTS_FILE = "weights.bin"
INLINE_BELOW_BYTES = 1024  # scalars and tiny shapes stay in the graph
ALIGNMENT = 64


EMBEDDING = "model.embed.weight"
OUTPUT_PROJECTION = EMBEDDING + ".projection"  # the same bytes, read by the output projection


def tie_output_projection(path: Path, vocab_size: int) -> None:
    """Make the output projection read the embedding matrix's values.

    The exporter folds F.linear(h, E) into MatMul(h, Eᵀ) with Eᵀ as a new initializer:
    a second copy of the largest tensor. Gemm(h, E, transB=1) computes the same from E.
    """
    graph = onnx.load(str(path), load_external_data=True)
    inits = {i.name: i for i in graph.graph.initializer}
    embedding = inits.get(EMBEDDING)
    for node in graph.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.shape[1] != vocab_size:
            continue  # only the [D, V] projection qualifies
        if embedding is None:
            embedding = numpy_helper.from_array(weight.T.copy(), EMBEDDING)
            graph.graph.initializer.append(embedding)
        elif not (numpy_helper.to_array(embedding) == weight.T).all():
            continue
        transposed = node.input[1]
        node.op_type = "Gemm"
        node.input[1] = EMBEDDING
        node.attribute.append(onnx.helper.make_attribute("transB", 1))
        if not any(transposed in n.input for n in graph.graph.node):
            graph.graph.initializer.remove(inits[transposed])
    split_lookup_from_product(graph)
    onnx.save(graph, str(path))


def split_lookup_from_product(graph: onnx.ModelProto) -> None:
    """The output projection reads the embedding under a name of its own, OUTPUT_PROJECTION, which
    share_weights places on the same bytes of the weights file.

    Under one name, onnxruntime's pre-packing reads the whole matrix and the lookup keeps those
    pages mapped: the embedding stays resident twice, packed and plain. Under two, the
    projection's plain copy is let go once packed, and the lookup maps only the rows it reads
    (service/runtime/packed.py)."""
    inits = {i.name: i for i in graph.graph.initializer}
    if EMBEDDING not in inits or OUTPUT_PROJECTION in inits:
        return
    readers = [n for n in graph.graph.node if EMBEDDING in n.input]
    products = [n for n in readers if n.op_type in ("MatMul", "Gemm")]
    if not products or len(products) == len(readers):
        return  # no lookup beside the product, or no product
    twin = onnx.TensorProto()
    twin.CopyFrom(inits[EMBEDDING])
    twin.name = OUTPUT_PROJECTION
    graph.graph.initializer.append(twin)
    for node in products:
        node.input[:] = [OUTPUT_PROJECTION if name == EMBEDDING else name for name in node.input]


def store_exact_fp16(path: Path) -> int:
    """Store fp32 weights that are exactly fp16 values (the checkpoint's are) as fp16, cast back on load.

    onnxruntime folds the Cast when the session starts, so inference stays fp32 and
    bit-identical while the file holds half the bytes. Returns the tensors converted.
    """
    graph = onnx.load(str(path), load_external_data=True)
    casts, converted = [], 0
    for init in list(graph.graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.nbytes < INLINE_BELOW_BYTES or not (values.astype(np.float16).astype(np.float32) == values).all():
            continue
        half_name = init.name + ".fp16"
        graph.graph.initializer.remove(init)
        graph.graph.initializer.append(numpy_helper.from_array(values.astype(np.float16), half_name))
        casts.append(onnx.helper.make_node("Cast", [half_name], [init.name], to=onnx.TensorProto.FLOAT))
        converted += 1
    for node in reversed(casts):
        graph.graph.node.insert(0, node)
    onnx.save(graph, str(path))
    return converted


def share_weights(out: Path, graph_files: Sequence[str], vocab_size: int) -> dict[str, int]:
    """Rewrite the graphs in `out` to read their initializers from one deduplicated weights file."""
    placed: dict[tuple[str, int, tuple[int, ...]], tuple[int, int]] = {}
    stored = referenced = 0
    for name in graph_files:
        tie_output_projection(out / name, vocab_size)
        store_exact_fp16(out / name)
    with open(out / WEIGHTS_FILE, "wb") as weights:
        for name in graph_files:
            graph = onnx.load(str(out / name), load_external_data=True)
            for init in graph.graph.initializer:
                raw = numpy_helper.to_array(init).tobytes()
                if len(raw) < INLINE_BELOW_BYTES:
                    continue
                key = (hashlib.sha256(raw).hexdigest(), init.data_type, tuple(init.dims))
                referenced += len(raw)
                if key not in placed:
                    offset = weights.tell()
                    weights.write(raw)
                    weights.write(b"\0" * (-len(raw) % ALIGNMENT))
                    placed[key] = (offset, len(raw))
                    stored += len(raw)
                offset, length = placed[key]
                for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                    init.ClearField(field)
                del init.external_data[:]
                for key_name, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
                    entry = init.external_data.add()
                    entry.key, entry.value = key_name, str(value)
                init.data_location = onnx.TensorProto.EXTERNAL
            onnx.save(graph, str(out / name))
    return {"weights_bytes_stored": stored, "weights_bytes_referenced": referenced}
