"""The decoder step cut at its self-attention nodes, the host attending between the segments
(service/runtime/step_segments.py, segmented.py): what the whole step computes, and a search's
translations."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.manifest import DEFAULT_MODEL_DIR, load_manifest
from service.runtime import native
from service.runtime.beam import DecodeOptions, beam_search
from service.runtime.segmented import SegmentedSession
from service.runtime.sessions import OnnxModel
from service.runtime.step_segments import ATTENTION_OP, host_attention_enabled, split_step
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


@pytest.mark.parametrize("model_dir", ["exported", "exported_int8"])
def test_the_cut_step_computes_the_whole_steps_log_probs(
    model_dir: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step through the segments and the host's attention gives what the whole graph gives, with
    onnxruntime's own attention node (fp32 to rounding; int8, whose activations are rounded to codes,
    nearly)."""
    directory: Path = request.getfixturevalue(model_dir)
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


def test_a_cut_search_translates_as_the_whole_step(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam search over the cut fp32 step finds the whole step's hypotheses, at every batch size."""
    cut = OnnxModel(exported, 1, packed=False)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "off")
    whole = OnnxModel(exported, 1, packed=False)
    sources = [cut.tokenizer.encode(text) for text in ("A man rides a bike.", "Two dogs play in the snow.", "A girl.")]
    options = DecodeOptions(beam_size=4)
    for batch in (sources[:1], sources):
        ours = beam_search(cut, batch, [TAG["fr"]] * len(batch), options)
        theirs = beam_search(whole, batch, [TAG["fr"]] * len(batch), options)
        assert [[h.tokens for h in hyps] for hyps in ours] == [[h.tokens for h in hyps] for hyps in theirs]


def test_the_committed_step_is_cut_once_a_layer() -> None:
    """Each self-attention node of the committed step is a cut, its biases the graph's own."""
    segments = split_step(DEFAULT_MODEL_DIR / "decoder_step.onnx")
    assert segments is not None
    model = onnx.load(str(DEFAULT_MODEL_DIR / "decoder_step.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == ATTENTION_OP]
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    assert len(segments.cuts) == len(nodes) == manifest.decoder_layers
    assert len(segments.graphs) == manifest.decoder_layers + 1
    assert [c.output for c in segments.cuts] == [n.output[0] for n in nodes]
    assert all(c.bias.shape == (3 * manifest.d_model,) and np.abs(c.bias).max() > 0 for c in segments.cuts)
    for graph in segments.graphs:
        assert not [n for n in onnx.load_from_string(graph).graph.node if n.op_type == ATTENTION_OP]


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


def test_the_setting_turns_the_host_attention_off() -> None:
    assert host_attention_enabled("on") and host_attention_enabled("")
    assert not host_attention_enabled("off") and not host_attention_enabled(" OFF ")


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
