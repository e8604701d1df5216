"""Whether the host's exact cross-attention kernel (_cross_attention_exact.c) gives onnxruntime's
MultiHeadAttention's output here bit for bit.

The kernel follows the order of operations of onnxruntime's CPU node on an AVX-512 CPU (MLAS's
products, exp and sums), in AVX-512's vectors or in AVX2's halves of them, so a step cut at its
cross-attention translates as the whole graph does, int8 graphs whose next products round their
inputs to codes too. onnxruntime's kernels differ by build and CPU, so before a step is cut there
for that reason (step_segments.py) the kernel is run against the node itself on random arrays of
the step's heads and depth, once a process; where the two differ anywhere, the node keeps the
cross-attention. On a CPU without AVX-512 the node sums in AVX2's order, and the kernel stands for
the node as an AVX-512 CPU runs it (takes_the_exact_kernel).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from service.runtime import native

log = logging.getLogger(__name__)

_MS_DOMAIN = "com.microsoft"
# sentences, beams and source positions tried: a sentence of one row (MLAS's M = 1 kernel), beams
# of a search, positions in one vector and in several, some masked
_TRIED = ((1, 1, 7), (3, 5, 19), (2, 4, 40))


def _node_graph(heads: int) -> bytes:
    """The exporter's cross-attention alone (export/graph_builder.py): the rows as [sentences, beams,
    width], each sentence's keys and values, and the source mask cast to int32."""
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask32"], to=TensorProto.INT32),
        helper.make_node(
            "MultiHeadAttention", ["query", "keys", "values", "", "mask32"], ["out"], domain=_MS_DOMAIN, num_heads=heads
        ),
    ]
    inputs = [helper.make_tensor_value_info(name, f32, None) for name in ("query", "keys", "values")]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, None))
    graph = helper.make_graph(nodes, "cross_attention", inputs, [helper.make_tensor_value_info("out", f32, None)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(_MS_DOMAIN, 1)]
    serialized: bytes = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    return serialized


@functools.cache
def gives_the_nodes_bits(heads: int, depth: int) -> bool:
    """Whether the exact kernel runs on this CPU and gives the node's output bit for bit for heads of
    `depth` floats, `heads` of them."""
    kernels = native.common_step
    if kernels is None or kernels.exact_cross_attention() != kernels.EXACT_AVX512:
        return False  # the node sums in AVX2's order on a CPU without AVX-512: it cannot give its bits
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    node = ort.InferenceSession(_node_graph(heads), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    width = heads * depth
    for sentences, beams, length in _TRIED:
        mask = np.ones((sentences, length), np.int64)
        mask[1:, length // 2 :] = 0
        query = rng.standard_normal((sentences, beams, width), dtype=np.float32)
        keys = rng.standard_normal((sentences, heads, length, depth), dtype=np.float32)
        values = rng.standard_normal((sentences, heads, length, depth), dtype=np.float32)
        (expected,) = node.run(None, {"query": query, "keys": keys, "values": values, "mask": mask})
        got = np.empty_like(query)
        kernels.cross_attention(query, keys, values, mask, got, kernels.EXACT_CROSS_KERNEL)
        if not np.array_equal(got.view(np.int32), np.asarray(expected, np.float32).view(np.int32)):
            log.warning(
                "the host's exact cross-attention differs from onnxruntime's node here (heads of %d floats): "
                "an int8 step keeps its cross-attention nodes",
                depth,
            )
            return False
    return True


def takes_the_exact_kernel(heads: int, depth: int) -> bool:
    """Whether a cross-attention of `heads` heads of `depth` floats is computed by the exact kernel: on
    an AVX-512 CPU where it gives the node's bits (gives_the_nodes_bits); on a CPU without AVX-512,
    wherever it runs in AVX2's vectors. There the node sums in AVX2's order, and the kernel gives
    what the node gives on an AVX-512 CPU, so that a step translates as it does there (with the
    encoder cut likewise, encoder_segments.py)."""
    kernels = native.common_step
    if kernels is not None and kernels.exact_cross_attention() == kernels.EXACT_AVX2:
        return True
    return gives_the_nodes_bits(heads, depth)
