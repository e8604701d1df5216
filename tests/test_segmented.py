"""The decoder step cut at its attention nodes, the host attending between the segments
(service/runtime/step_segments.py, segmented.py): what the whole step computes, and a search's
translations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.manifest import DEFAULT_MODEL_DIR, load_manifest, sha256_file
from service.runtime import native
from service.runtime.beam import DecodeOptions, beam_search
from service.runtime.cross_exact import takes_the_exact_kernel
from service.runtime.segmented import SegmentedSession
from service.runtime.sessions import OnnxModel
from service.runtime.step_segments import (
    ATTENTION_OP,
    CROSS_ATTENTION_OP,
    AttentionCut,
    CrossAttentionCut,
    host_attention,
    split_step,
)
from tests.conftest import TAG

pytestmark = pytest.mark.skipif(native.common_step is None, reason=native.NOT_BUILT)


def _step(model: OnnxModel, sentences: int, beams: int, past: int) -> np.ndarray:
    """One step's log-probs over random histories, the same for every model loaded alike."""
    rng = np.random.default_rng(3)
    m = model.manifest
    ids = rng.integers(10, 200, (sentences, 7))
    mask = np.ones_like(ids)
    mask[0, 5:] = 0
    cache = model.new_cache(sentences, past + 1, beams)
    cache.reorder(np.repeat(np.arange(sentences), beams))
    for buffer in cache.buffers:
        buffer[:, :, :past] = rng.standard_normal(buffer[:, :, :past].shape)
    cache.indirection[:, :, :past] = rng.integers(0, beams, (sentences, beams, past))
    cache.length = past
    cross = model.encode(ids, mask).cross
    last = rng.integers(10, min(200, m.vocab_size), (sentences * beams, 1))
    return model.decode_step(last, mask, cache, cross)


@pytest.mark.parametrize("setting", ["self", "on", "auto"])
@pytest.mark.parametrize("model_dir", ["exported", "exported_int8"])
def test_the_cut_step_computes_the_whole_steps_log_probs(
    model_dir: str, setting: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step through the segments and the host's attention (the self-attention's, or both kinds)
    gives what the whole graph gives, with onnxruntime's own attention nodes (fp32 to rounding; int8,
    whose activations are rounded to codes, nearly)."""
    directory: Path = request.getfixturevalue(model_dir)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", setting)
    cut = OnnxModel(directory, 1, packed=False)
    assert isinstance(cut.decoder.wide, SegmentedSession)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "off")
    whole = OnnxModel(directory, 1, packed=False)
    assert not isinstance(whole.decoder.wide, SegmentedSession)
    for sentences, beams, past in ((1, 1, 0), (2, 4, 3), (3, 5, 6)):
        ours, theirs = _step(cut, sentences, beams, past), _step(whole, sentences, beams, past)
        finite = np.isfinite(theirs)
        assert np.array_equal(finite, np.isfinite(ours))
        difference = np.abs(ours[finite] - theirs[finite])
        if model_dir == "exported":
            assert difference.max() < 1e-4
        else:  # a code may round the other way: a few scores move by a step of the grid
            assert np.median(difference) < 1e-4 and difference.max() < 0.5
        assert np.array_equal(np.argmax(ours, axis=1), np.argmax(theirs, axis=1))


@pytest.mark.parametrize("setting", ["self", "on"])
def test_a_cut_search_translates_as_the_whole_step(
    exported: Path, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beam search over the cut fp32 step finds the whole step's hypotheses, at every batch size."""
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", setting)
    cut = OnnxModel(exported, 1, packed=False)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "off")
    whole = OnnxModel(exported, 1, packed=False)
    sources = [cut.tokenizer.encode(text) for text in ("A man rides a bike.", "Two dogs play in the snow.", "A girl.")]
    options = DecodeOptions(beam_size=4)
    for batch in (sources[:1], sources):
        ours = beam_search(cut, batch, [TAG["fr"]] * len(batch), options)
        theirs = beam_search(whole, batch, [TAG["fr"]] * len(batch), options)
        assert [[h.tokens for h in hyps] for hyps in ours] == [[h.tokens for h in hyps] for hyps in theirs]


def test_the_committed_step_is_cut_twice_a_layer() -> None:
    """Each self-attention and cross-attention node of the committed step is a cut, in the graph's
    order: the self-attention's biases the graph's own, the cross-attention reading the layer's
    encoder keys and values and the source mask; no segment keeps an attention node."""
    segments = split_step(DEFAULT_MODEL_DIR / "decoder_step.onnx")
    assert segments is not None
    model = onnx.load(str(DEFAULT_MODEL_DIR / "decoder_step.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type in (ATTENTION_OP, CROSS_ATTENTION_OP)]
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    assert len(segments.cuts) == len(nodes) == 2 * manifest.decoder_layers
    assert len(segments.graphs) == 2 * manifest.decoder_layers + 1
    assert [c.output for c in segments.cuts] == [n.output[0] for n in nodes]
    selves, crosses = segments.cuts[::2], segments.cuts[1::2]
    assert all(isinstance(c, AttentionCut) for c in selves) and all(isinstance(c, CrossAttentionCut) for c in crosses)
    assert all(c.bias.shape == (3 * manifest.d_model,) and np.abs(c.bias).max() > 0 for c in selves)  # type: ignore[union-attr]
    inputs = {i.name for i in model.graph.input}
    for layer, cut in enumerate(crosses):
        assert isinstance(cut, CrossAttentionCut)
        assert (cut.key, cut.value, cut.mask) == (f"cross_key.{layer}", f"cross_value.{layer}", "attention_mask")
        assert {cut.key, cut.value, cut.mask} <= inputs
    for graph in segments.graphs:
        kinds = {n.op_type for n in onnx.load_from_string(graph).graph.node}
        assert not kinds & {ATTENTION_OP, CROSS_ATTENTION_OP}


def test_the_committed_steps_packed_copy_is_cut_twice_a_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cross-attention on the host, the graph a model is served from, onnxruntime's
    optimized copy with its packed weights (packed.py), is cut at each attention node as the
    exported graph is: the optimizer writes each cross-attention's `unidirectional` out at its
    default, which the host computes."""
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "on")
    model = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=tmp_path)
    (path,) = tmp_path.glob("*/decoder_step.onnx")
    copy = onnx.load(str(path), load_external_data=False)
    crosses = [n for n in copy.graph.node if n.op_type == CROSS_ATTENTION_OP]
    assert crosses and all(any(a.name == "unidirectional" for a in n.attribute) for n in crosses)
    step = model.decoder.wide
    assert isinstance(step, SegmentedSession)
    layers = load_manifest(DEFAULT_MODEL_DIR).decoder_layers
    assert [type(c) for c in step.segments.cuts] == [AttentionCut, CrossAttentionCut] * layers


def test_a_cross_attention_with_another_mask_value_or_direction_stays_with_onnxruntime(
    exported_int8: Path, tmp_path: Path
) -> None:
    """A cross-attention attending one way only, or lowering a masked position's score by another
    value, is no cut."""
    path = tmp_path / "decoder_step.onnx"
    shutil.copy(exported_int8 / "weights.bin", tmp_path / "weights.bin")  # the self-attention's biases
    for name, value in (("unidirectional", 1), ("mask_filter_value", -1e4 - 1)):
        model = onnx.load(str(exported_int8 / "decoder_step.onnx"), load_external_data=False)
        for node in model.graph.node:
            if node.op_type == CROSS_ATTENTION_OP:
                node.attribute.append(onnx.helper.make_attribute(name, value))
        onnx.save(model, str(path))
        segments = split_step(path)
        assert segments is not None and not any(isinstance(c, CrossAttentionCut) for c in segments.cuts)


def test_a_cross_attention_the_host_does_not_compute_stays_in_its_segment(
    exported_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cross-attention node with an attribute at a value the host's kernel does not compute (a
    masked position lowered by 1e9, not 10,000) stays in its segment, onnxruntime computing it, and
    the cut step still gives the whole step's log-probs."""
    copy = tmp_path / "filtered"
    shutil.copytree(exported_int8, copy)
    path = copy / "decoder_step.onnx"
    model = onnx.load(str(path), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == CROSS_ATTENTION_OP)
    node.attribute.append(onnx.helper.make_attribute("mask_filter_value", -1e9))
    onnx.save(model, str(path))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"][path.name] = sha256_file(path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    segments = split_step(path)
    assert segments is not None
    layers = load_manifest(copy).decoder_layers
    assert sum(isinstance(c, CrossAttentionCut) for c in segments.cuts) == layers - 1
    kept = [n for g in segments.graphs for n in onnx.load_from_string(g).graph.node if n.op_type == CROSS_ATTENTION_OP]
    assert len(kept) == 1
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "on")
    cut = OnnxModel(copy, 1, packed=False)
    assert isinstance(cut.decoder.wide, SegmentedSession)
    whole = OnnxModel(exported_int8, 1, packed=False)
    ours, theirs = _step(cut, 3, 5, 6), _step(whole, 3, 5, 6)
    assert np.array_equal(np.argmax(ours, axis=1), np.argmax(theirs, axis=1))


def test_cross_attention_keys_of_another_type_stay_with_onnxruntime(exported_int8: Path, tmp_path: Path) -> None:
    """A cross-attention whose keys the step takes in another type than fp32 stays in its segment;
    the self-attention is still cut."""
    path = tmp_path / "decoder_step.onnx"
    model = onnx.load(str(exported_int8 / "decoder_step.onnx"), load_external_data=False)
    next(i for i in model.graph.input if i.name == "cross_key.0").type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(model, str(path))
    segments = split_step(path)
    assert segments is not None
    layers = load_manifest(exported_int8).decoder_layers
    assert sum(isinstance(c, AttentionCut) for c in segments.cuts) == layers
    assert [c.key for c in segments.cuts if isinstance(c, CrossAttentionCut)] == [
        f"cross_key.{layer}" for layer in range(1, layers)
    ]


def test_searches_on_the_same_arrays_read_each_searchs_encoder_keys(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches one after another of sources of the same shape, which run on the arrays and bindings
    of the last search of that shape, each attend over their own encoder keys and values: the whole
    step's hypotheses and scores every time."""
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "on")  # the cross-attention's kernel reads the keys
    cut = OnnxModel(exported, 1, packed=False)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "off")
    whole = OnnxModel(exported, 1, packed=False)
    texts = ("A man rides a bike.", "Two dogs play here.", "A girl eats a cake.", "The sun is hot.", "A dog runs.",
             "A man sits.", "A boy swims.", "A cat sleeps.", "Two men talk.", "A girl sings.")  # fmt: skip
    by_length: dict[int, list[list[int]]] = {}
    for text in texts:
        source = cut.tokenizer.encode(text)
        by_length.setdefault(len(source), []).append(source)
    sources = max(by_length.values(), key=len)
    assert len(sources) >= 2
    options = DecodeOptions(beam_size=4)
    for source in sources:
        (ours,) = beam_search(cut, [source], [TAG["fr"]], options)
        (theirs,) = beam_search(whole, [source], [TAG["fr"]], options)
        assert [h.tokens for h in ours] == [h.tokens for h in theirs]
        assert np.allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-4)


def test_an_attention_node_the_host_does_not_compute_keeps_the_step_whole(exported: Path, tmp_path: Path) -> None:
    """A self-attention node with an attribute the host's kernel does not know (its own scale)
    leaves the step whole, onnxruntime's node computing it."""
    copy = tmp_path / "scaled"
    shutil.copytree(exported, copy)
    path = copy / "decoder_step.onnx"
    model = onnx.load(str(path), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == ATTENTION_OP)
    node.attribute.append(onnx.helper.make_attribute("scale", 0.5))
    onnx.save(model, str(path))
    assert split_step(path) is None
    assert split_step(exported / "decoder_step.onnx") is not None


def test_the_setting_turns_the_host_attention_off_or_to_the_cross_attention_too(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`off` keeps the step whole, `self` cuts it at its self-attention only, `on` at both kinds of
    attention, and the default, `auto`, an fp32 step at both and an int8 one at its cross-attention
    only where the host computes it as the node does (an AVX-512 CPU): the kinds of cut whose
    translations each precision's BLEU figures hold."""
    assert host_attention("on") == host_attention(" ON ") == "on"
    assert host_attention("off") == host_attention(" OFF ") == "off"
    assert host_attention("self") == host_attention(" Self ") == "self"
    assert host_attention("auto") == host_attention("") == host_attention("both") == "auto"
    monkeypatch.delenv("MTSERVE_HOST_ATTENTION", raising=False)
    assert host_attention() == "auto"
    layers = load_manifest(DEFAULT_MODEL_DIR).decoder_layers
    int8 = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=False)
    assert isinstance(int8.decoder.wide, SegmentedSession)
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    exact = native.common_step is not None and takes_the_exact_kernel(manifest.n_heads, manifest.head_dim)
    int8_cuts = [AttentionCut, CrossAttentionCut] * layers if exact else [AttentionCut] * layers
    assert [type(c) for c in int8.decoder.wide.segments.cuts] == int8_cuts
    fp32 = OnnxModel(exported, 1, packed=False)
    assert isinstance(fp32.decoder.wide, SegmentedSession)
    tiny_layers = fp32.manifest.decoder_layers
    assert [type(c) for c in fp32.decoder.wide.segments.cuts] == [AttentionCut, CrossAttentionCut] * tiny_layers
    cuts = split_step(DEFAULT_MODEL_DIR / "decoder_step.onnx", cross="self")
    assert cuts is not None and [type(c) for c in cuts.cuts] == [AttentionCut] * layers
    assert len(cuts.graphs) == layers + 1
    cuts = split_step(exported / "decoder_step.onnx", cross="self")
    assert cuts is not None and [type(c) for c in cuts.cuts] == [AttentionCut] * tiny_layers


def test_an_int8_step_cut_at_its_cross_attention_by_default_gives_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the host's exact kernel gives the node's bits, the committed int8 step is cut at its
    cross-attention too by default, and each step gives the log-probs of the step cut at its
    self-attention only, to the bit: the translations and BLEU of that cut stay."""
    assert native.common_step is not None
    if native.common_step.exact_cross_attention() != native.common_step.EXACT_AVX512:
        pytest.skip("onnxruntime's node computes in AVX-512's order only on an AVX-512 CPU")
    monkeypatch.delenv("MTSERVE_HOST_ATTENTION", raising=False)
    both = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=False)
    assert isinstance(both.decoder.wide, SegmentedSession)
    cuts = both.decoder.wide.segments.cuts
    assert any(isinstance(c, CrossAttentionCut) and c.exact for c in cuts)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "self")
    selves = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=False)
    for sentences, beams, past in ((1, 1, 0), (1, 5, 4), (3, 5, 9)):
        ours, theirs = _step(both, sentences, beams, past), _step(selves, sentences, beams, past)
        assert np.array_equal(ours.view(np.int32), theirs.view(np.int32))


def test_an_int8_step_keeps_its_cross_attention_where_the_exact_kernel_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the exact kernel does not give the node's bits (another onnxruntime build or CPU), the
    default cuts an int8 step at its self-attention only; `on` still cuts it at both, with the host's
    own kernel."""
    import service.runtime.step_segments as step_segments

    monkeypatch.setattr(step_segments, "takes_the_exact_kernel", lambda heads, depth: False)
    layers = load_manifest(DEFAULT_MODEL_DIR).decoder_layers
    auto = split_step(DEFAULT_MODEL_DIR / "decoder_step.onnx", cross="auto")
    assert auto is not None and [type(c) for c in auto.cuts] == [AttentionCut] * layers
    on = split_step(DEFAULT_MODEL_DIR / "decoder_step.onnx", cross="on")
    assert on is not None and [type(c) for c in on.cuts] == [AttentionCut, CrossAttentionCut] * layers
    assert not any(isinstance(c, CrossAttentionCut) and c.exact for c in on.cuts)


def test_a_binding_refuses_what_the_step_does_not_have(exported: Path) -> None:
    """An input the step does not declare, and a present cache bound to other memory than its past,
    are refused when bound, as onnxruntime's own binding refuses a name it does not know."""
    session = OnnxModel(exported, 1, packed=False).decoder.wide
    assert isinstance(session, SegmentedSession)
    binding = session.io_binding()
    with pytest.raises(ValueError, match="no input 'nonsense'"):
        binding.bind_cpu_input("nonsense", np.zeros(1, np.float32))
    past = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 4, 8), np.float32))
    other = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 4, 8), np.float32))
    binding.bind_ortvalue_input("past_key.0", past)
    binding.bind_ortvalue_output("present_key.0", past)
    with pytest.raises(ValueError, match=r"present_key\.0 must be bound to the buffer bound as its past"):
        binding.bind_ortvalue_output("present_key.0", other)
