"""The encoder cut at its self-attention nodes for the host's exact kernel
(service/runtime/encoder_segments.py): what the whole graph computes, and where the runtime cuts it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.manifest import DEFAULT_MODEL_DIR
from service.runtime import native
from service.runtime.encoder_segments import SegmentedEncoder, cuts_encoder, split_encoder
from service.runtime.sessions import OnnxModel

pytestmark = pytest.mark.skipif(native.common_step is None, reason=native.NOT_BUILT)


def _exact_is_avx512() -> bool:
    kernels = native.common_step
    return kernels is not None and kernels.exact_cross_attention() == kernels.EXACT_AVX512


def _batches(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sources of one token and of many, some padded past their ends, as encode takes them."""
    rng = np.random.default_rng(seed)
    found = []
    for sentences, length in ((1, 1), (1, 17), (4, 9), (16, 40)):
        ids = rng.integers(9, 8000, (sentences, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1:, length // 2 + 1 :] = 0
        found.append((ids, mask))
    return found


def test_an_encoder_cut_at_its_attention_encodes_as_the_whole_graph(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The committed encoder cut at its three attention nodes, as exported and as its packed copy,
    gives the whole graph's states and cross keys and values: to the bit where the node computes in
    the kernel's order (an AVX-512 CPU)."""
    kernels = native.common_step
    assert kernels is not None
    if not kernels.exact_cross_attention():
        pytest.skip("this CPU has no exact kernel")
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "self")  # the encoder whole
    whole = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=False)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "on")
    cut = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=False)
    packed = OnnxModel(DEFAULT_MODEL_DIR, 1, packed=tmp_path)
    assert not isinstance(whole.encoder.wide, SegmentedEncoder)
    assert isinstance(cut.encoder.wide, SegmentedEncoder) and isinstance(packed.encoder.wide, SegmentedEncoder)
    assert len(cut.encoder.wide.segments.cuts) == cut.manifest.decoder_layers  # one a layer (3 and 3 here)
    for (ids, mask), model in zip(_batches(3) * 2, [cut] * 4 + [packed] * 4, strict=True):
        ours, theirs = model.encode(ids, mask), whole.encode(ids, mask)
        for got, expected in zip([ours.hidden, *ours.cross], [theirs.hidden, *theirs.cross], strict=True):
            if _exact_is_avx512():
                assert np.array_equal(got.view(np.int32), expected.view(np.int32))
            else:  # the node sums in AVX2's order here
                np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_encoder_is_cut_by_default_only_where_the_node_sums_in_avx2s_order(
    monkeypatch: pytest.MonkeyPatch, exported: Path
) -> None:
    """`auto` cuts an int8 encoder on a CPU whose exact kernel takes AVX2's vectors, not on an AVX-512
    CPU (its node gives the kernel's bits itself) and not an fp32 encoder; `on` cuts any wherever the
    kernel runs; `self` and `off` never."""
    kernels = native.common_step
    assert kernels is not None
    if not kernels.exact_cross_attention():
        pytest.skip("this CPU has no exact kernel")
    int8, fp32 = DEFAULT_MODEL_DIR / "encoder.onnx", exported / "encoder.onnx"
    for setting in ("off", "self"):
        assert not cuts_encoder(int8, setting) and not cuts_encoder(fp32, setting)
    assert cuts_encoder(int8, "on") and cuts_encoder(fp32, "on")
    monkeypatch.setattr(kernels, "exact_cross_attention", lambda: kernels.EXACT_AVX512)
    assert not cuts_encoder(int8, "auto")
    monkeypatch.setattr(kernels, "exact_cross_attention", lambda: kernels.EXACT_AVX2)
    assert cuts_encoder(int8, "auto") and not cuts_encoder(fp32, "auto")
    monkeypatch.setattr(kernels, "exact_cross_attention", lambda: 0)
    assert not cuts_encoder(int8, "on") and not cuts_encoder(int8, "auto")


def test_an_encoder_whose_attention_the_kernel_does_not_compute_is_not_cut(tmp_path: Path) -> None:
    """An attention node with an attribute the kernel does not compute, or a mask that is not the
    encoder's own, leaves the encoder whole."""
    model = onnx.load(str(DEFAULT_MODEL_DIR / "encoder.onnx"), load_external_data=False)
    assert split_encoder(DEFAULT_MODEL_DIR / "encoder.onnx") is not None
    for change in ("attribute", "mask"):
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        node = next(n for n in changed.graph.node if n.op_type == "MultiHeadAttention")
        if change == "attribute":
            node.attribute.append(onnx.helper.make_attribute("scale", 0.5))
        else:
            node.input[4] = "attention_mask"  # the int64 input itself, not its int32 cast
        path = tmp_path / change / "encoder.onnx"
        path.parent.mkdir()
        shutil.copy(DEFAULT_MODEL_DIR / "weights.bin", path.parent / "weights.bin")  # onnx reads no link
        onnx.save(changed, str(path))
        assert split_encoder(path) is None, change


def test_a_translation_is_the_same_with_the_encoder_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentences translated with the encoder cut come out as with it whole, on an AVX-512 CPU (where
    the two compute alike to the bit)."""
    from service.runtime.translator import Translator

    if not _exact_is_avx512():
        pytest.skip("the node computes in the kernel's order only on an AVX-512 CPU")
    texts = ["A man is riding a bicycle down a busy street.", "Two dogs play in the snow.", "Hello."]
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "self")
    whole = [t[0].text for t in Translator.load(DEFAULT_MODEL_DIR, 1, packed=False).translate(texts, "fr")]
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "on")
    cut = Translator.load(DEFAULT_MODEL_DIR, 1, packed=False)
    assert isinstance(cut.model.encoder.wide, SegmentedEncoder)
    assert [t[0].text for t in cut.translate(texts, "fr")] == whole
