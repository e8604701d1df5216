"""The decoder step's attention on the host (service/runtime/_attention.c) against the nodes it
stands in for: onnxruntime's DecoderMaskedMultiHeadAttention over the cache, and its
MultiHeadAttention over the encoder's keys and values."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bench.cross_attention import inputs as cross_inputs
from bench.cross_attention import node_session as cross_node_session
from service.runtime import native

pytestmark = pytest.mark.skipif(native.common_step is None, reason=native.NOT_BUILT)

MS_DOMAIN = "com.microsoft"


def _kernel_session(heads: int, depth: int) -> ort.InferenceSession:
    """The node as the exporter writes it (export/graph_builder.py, cached_self_attention)."""
    width, f32, i32 = heads * depth, TensorProto.FLOAT, TensorProto.INT32
    inputs = [helper.make_tensor_value_info(n, f32, ["B", 1, width]) for n in ("q", "k", "v")]
    inputs += [helper.make_tensor_value_info(n, f32, ["B", heads, "C", depth]) for n in ("past_key", "past_value")]
    inputs += [
        helper.make_tensor_value_info("past_length", i32, []),
        helper.make_tensor_value_info("beam_width", i32, [1]),
        helper.make_tensor_value_info("indirection", i32, ["S", "W", "C"]),
        helper.make_tensor_value_info("bias", f32, [3 * width]),
    ]
    names = ["q", "k", "v", "", "", "past_key", "past_value", "past_length", "beam_width", "indirection", "bias"]
    node = helper.make_node(
        "DecoderMaskedMultiHeadAttention", names, ["out", "present_key", "present_value"], domain=MS_DOMAIN,
        num_heads=heads, past_present_share_buffer=1,
    )  # fmt: skip
    outputs = [helper.make_tensor_value_info(n, f32, None) for n in ("out", "present_key", "present_value")]
    graph = helper.make_graph([node], "attention", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _state(
    rng: np.random.Generator, sentences: int, beams: int, heads: int, depth: int, capacity: int, length: int
) -> dict[str, np.ndarray]:
    rows, width = sentences * beams, heads * depth
    state = {n: rng.standard_normal((rows, 1, width), dtype=np.float32) for n in ("q", "k", "v")}
    state["bias"] = rng.standard_normal(3 * width, dtype=np.float32)
    for name in ("key_cache", "value_cache"):
        state[name] = rng.standard_normal((rows, heads, capacity, depth), dtype=np.float32)
    state["indirection"] = rng.integers(0, beams, (sentences, beams, capacity)).astype(np.int32)
    state["length"] = np.array(length, np.int32)
    state["beam_width"] = np.array([beams], np.int32)
    return state


def _kernels(state: dict[str, np.ndarray], heads: int) -> np.ndarray:
    """The node's output on `state`, its caches written in place as the runtime binds them."""
    session = _kernel_session(heads, state["key_cache"].shape[3])
    binding = session.io_binding()
    feeds = {n: state[n] for n in ("q", "k", "v", "bias", "indirection", "beam_width")}
    feeds |= {"past_key": state["key_cache"], "past_value": state["value_cache"], "past_length": state["length"]}
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    out = np.empty_like(state["q"])
    binding.bind_output("out", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    for present, cache in (("present_key", state["key_cache"]), ("present_value", state["value_cache"])):
        binding.bind_output(present, "cpu", 0, np.float32, list(cache.shape), cache.ctypes.data)
    session.run_with_iobinding(binding)
    return out


def _hosts(state: dict[str, np.ndarray], kernel: int = -1) -> np.ndarray:
    assert native.common_step is not None
    out = np.empty_like(state["q"])
    names = ("q", "k", "v", "bias", "key_cache", "value_cache", "indirection", "length", "beam_width")
    native.common_step.self_attention(*(state[n] for n in names), out, kernel)
    return out


def _copy(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: array.copy() for name, array in state.items()}


@pytest.mark.parametrize("depth", [64, 128, 8, 48, 12])  # a head held in registers, or not; one no vector fits
@pytest.mark.parametrize("kernel", [2, 1, 0])  # AVX-512, AVX2, plain C: each the CPU and the depth allow
@pytest.mark.parametrize(("sentences", "beams", "length"), [(1, 1, 0), (3, 1, 5), (2, 4, 1), (3, 5, 9)])
def test_the_hosts_self_attention_computes_the_kernels(
    depth: int, kernel: int, sentences: int, beams: int, length: int
) -> None:
    """The same output as the node through the beam indirection, and the step's own key and value
    (with their biases) written at position `length` of each row, as the node writes them."""
    assert native.common_step is not None
    if kernel > native.common_step.attention_kernel(depth):
        pytest.skip(f"this CPU, or heads of {depth} floats, take no kernel {kernel}")
    heads, capacity = 4, 12
    state = _state(np.random.default_rng(depth + length), sentences, beams, heads, depth, capacity, length)
    theirs, ours = _copy(state), _copy(state)
    expected, got = _kernels(theirs, heads), _hosts(ours, kernel)
    assert np.abs(got - expected).max() < 1e-5
    for cache in ("key_cache", "value_cache"):
        assert np.array_equal(ours[cache], theirs[cache])
        assert not np.array_equal(ours[cache][:, :, length], state[cache][:, :, length])


def test_a_rows_attention_does_not_depend_on_the_rows_beside_it() -> None:
    """A sentence's rows get the same output to the bit alone and in a batch of others."""
    rng, heads, depth, beams, capacity, length = np.random.default_rng(1), 4, 64, 5, 16, 11
    batch = _state(rng, 7, beams, heads, depth, capacity, length)
    alone = _copy(batch)
    for name in ("q", "k", "v", "key_cache", "value_cache"):
        alone[name] = alone[name][3 * beams : 4 * beams].copy()
    alone["indirection"] = alone["indirection"][3:4].copy()
    assert np.array_equal(_hosts(alone), _hosts(batch)[3 * beams : 4 * beams])


def test_bad_indirection_and_a_full_cache_are_refused() -> None:
    """A beam outside the sentence's, or a step past the cache's last position, raises and writes nothing."""
    state = _state(np.random.default_rng(2), 2, 3, 2, 8, 6, 4)
    bad = _copy(state)
    bad["indirection"][1, 2, 3] = 3
    with pytest.raises(ValueError, match="outside the sentence"):
        _hosts(bad)
    assert np.array_equal(bad["key_cache"], state["key_cache"])
    full = _copy(state)
    full["length"] = np.array(6, np.int32)
    with pytest.raises(ValueError, match="6 positions, 6 written"):
        _hosts(full)


def _cross_hosts(state: dict[str, np.ndarray], kernel: int = -1, masked: bool = True) -> np.ndarray:
    assert native.common_step is not None
    out = np.empty_like(state["rows"])
    mask = state["mask"] if masked else None
    native.common_step.cross_attention(state["rows"], state["keys"], state["values"], mask, out, kernel)
    return out


@pytest.mark.parametrize("depth", [64, 128, 8, 48, 12])
@pytest.mark.parametrize("kernel", [2, 1, 0])
@pytest.mark.parametrize(("sentences", "beams", "length"), [(1, 1, 1), (3, 1, 7), (2, 4, 16), (3, 5, 17), (2, 5, 40)])
def test_the_hosts_cross_attention_computes_the_kernels(
    depth: int, kernel: int, sentences: int, beams: int, length: int
) -> None:
    """The same output as the node, its padded positions left out by the mask as the node leaves them."""
    assert native.common_step is not None
    if kernel > native.common_step.attention_kernel(depth):
        pytest.skip(f"this CPU, or heads of {depth} floats, take no kernel {kernel}")
    heads = 4
    state = cross_inputs(np.random.default_rng(depth + length), sentences, beams, length, heads, depth)
    (expected,) = cross_node_session(heads, depth).run(None, state)
    got = _cross_hosts(state, kernel)
    assert np.abs(got - expected.reshape(got.shape)).max() < 1e-5


_EXACT_SHAPES = [
    (1, 1, 1), (3, 1, 7), (1, 1, 130), (2, 4, 16), (3, 5, 17), (2, 5, 40), (1, 5, 300), (2, 20, 9), (93, 5, 16)
]  # fmt: skip


@pytest.mark.parametrize("depth", [64, 128, 8, 48, 12, 256])
@pytest.mark.parametrize(("sentences", "beams", "length"), _EXACT_SHAPES)
@pytest.mark.parametrize("vectors", ["widest", "avx2"])
def test_the_exact_cross_attention_gives_the_nodes_bits(
    depth: int, sentences: int, beams: int, length: int, vectors: str
) -> None:
    """The exact kernel gives onnxruntime's node's output bit for bit, sentences of one row (MLAS's
    M = 1 kernel) and of many, heads of a vector's width or not, a depth or positions in slices; in
    AVX-512's vectors and in AVX2's, which a CPU without AVX-512 takes to compute what onnxruntime
    computes on one with it."""
    assert native.common_step is not None
    if native.common_step.exact_cross_attention() != native.common_step.EXACT_AVX512:
        pytest.skip("onnxruntime's node computes in AVX-512's order only on an AVX-512 CPU")
    kernels = native.common_step
    kernel = kernels.EXACT_CROSS_KERNEL if vectors == "widest" else kernels.EXACT_CROSS_KERNEL_AVX2
    heads = 4
    state = cross_inputs(np.random.default_rng(depth * 1000 + length + beams), sentences, beams, length, heads, depth)
    (expected,) = cross_node_session(heads, depth).run(None, state)
    got = _cross_hosts(state, kernel)
    assert np.array_equal(got.view(np.int32), np.asarray(expected, np.float32).reshape(got.shape).view(np.int32))
    alone = {"rows": state["rows"][:beams].copy()} | {name: state[name][:1].copy() for name in ("keys", "values")}
    alone["mask"] = np.ones_like(state["mask"][:1])
    alone["shape"] = np.array([1, -1, heads * depth], np.int64)
    (unmasked,) = cross_node_session(heads, depth).run(None, alone)
    got = _cross_hosts(alone, kernel, masked=False)
    assert np.array_equal(got.view(np.int32), np.asarray(unmasked, np.float32).reshape(got.shape).view(np.int32))


def test_the_exact_cross_attention_is_refused_where_the_cpu_has_none() -> None:
    """Asked for where the CPU has neither AVX-512 nor AVX2 with FMA, the exact kernel raises rather
    than computing otherwise."""
    assert native.common_step is not None
    if native.common_step.exact_cross_attention():
        pytest.skip("this CPU has the exact kernel")
    state = cross_inputs(np.random.default_rng(7), 1, 2, 5, 2, 16)
    with pytest.raises(ValueError, match="no exact kernel"):
        _cross_hosts(state, native.common_step.EXACT_CROSS_KERNEL)


def test_a_rows_cross_attention_does_not_depend_on_the_rows_beside_it() -> None:
    """A sentence's rows get the same output to the bit alone and in a batch of others, with a mask
    and without one where nothing is padded."""
    heads, depth, beams = 4, 64, 5
    batch = cross_inputs(np.random.default_rng(4), 6, beams, 23, heads, depth)
    alone = {"rows": batch["rows"][2 * beams : 3 * beams].copy()}
    alone |= {name: batch[name][2:3].copy() for name in ("keys", "values", "mask")}
    assert np.array_equal(_cross_hosts(alone), _cross_hosts(batch)[2 * beams : 3 * beams])
    whole = cross_inputs(np.random.default_rng(5), 1, beams, 23, heads, depth)
    assert np.array_equal(_cross_hosts(whole), _cross_hosts(whole, masked=False))


def test_cross_attention_refuses_arrays_that_do_not_agree() -> None:
    """Rows that are not a whole number a sentence, values of another shape than the keys, and a mask
    of another type raise."""
    assert native.common_step is not None
    state = cross_inputs(np.random.default_rng(6), 2, 3, 5, 2, 8)
    rows, keys, values, mask = state["rows"], state["keys"], state["values"], state["mask"]
    out = np.empty_like(rows)
    with pytest.raises(ValueError, match="shapes do not agree"):
        native.common_step.cross_attention(rows[:5], keys, values, mask, out[:5])
    with pytest.raises(ValueError, match="shapes do not agree"):
        native.common_step.cross_attention(rows, keys, np.ascontiguousarray(values[:, :, :4]), mask, out)
    with pytest.raises(TypeError, match="mask"):
        native.common_step.cross_attention(rows, keys, values, mask.astype(np.int32), out)


@pytest.mark.parametrize("depth", [64, 128, 16, 48])
@pytest.mark.parametrize(("sentences", "beams", "capacity", "length"), [(1, 1, 8, 0), (2, 5, 20, 7), (3, 4, 40, 33)])
def test_a_cpu_without_avx512_attends_as_one_with_it(
    depth: int, sentences: int, beams: int, capacity: int, length: int
) -> None:
    """For heads of a multiple of 16 floats the self-attention and the host's own cross-attention in
    AVX2's vectors (kernel 1, as a CPU without AVX-512 takes them) give the AVX-512 kernel's output bit
    for bit: 16 lanes held as two halves, summed in AVX-512's order."""
    assert native.common_step is not None
    if native.common_step.attention_kernel(depth) < 2:
        pytest.skip("this CPU has no AVX-512")
    heads = 4
    state = _state(np.random.default_rng(depth + length), sentences, beams, heads, depth, capacity, length)
    wide, halves = _hosts(_copy(state), 2), _hosts(_copy(state), 1)
    assert np.array_equal(wide.view(np.int32), halves.view(np.int32))
    cross = cross_inputs(np.random.default_rng(depth * length + 1), sentences, beams, length + 3, heads, depth)
    assert np.array_equal(_cross_hosts(cross, 2).view(np.int32), _cross_hosts(cross, 1).view(np.int32))
