"""Export a tiny trained model and hold the ONNX runtime to the PyTorch reference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.validate import compare_logits
from model.artifacts import load_model_dir
from model.beam import beam_search as torch_beam_search
from service.conventions import EOS_ID
from service.manifest import MANIFEST_FILE, ModelFileError, load_manifest
from service.runtime.beam import DecodeOptions, beam_search
from service.runtime.packed import packed_graph
from service.runtime.sessions import OnnxModel
from tests.conftest import ROOT, TAG

pytestmark = pytest.mark.slow


def _sources(model_dir: Path, texts: list[str]) -> list[list[int]]:
    _, sp = load_model_dir(model_dir)
    return [[*ids, EOS_ID] for ids in sp.encode(texts)]


def test_onnx_logits_match_pytorch(tiny_model_dir: Path, exported: Path, sentences: list[str]) -> None:
    model, _ = load_model_dir(tiny_model_dir)
    diffs = compare_logits(model, OnnxModel(exported), _sources(tiny_model_dir, sentences))
    assert diffs and all(d <= 1e-4 for d in diffs.values()), diffs


def test_export_report_records_greedy_parity(exported: Path, sentences: list[str]) -> None:
    report = json.loads((exported / "export_report.json").read_text())
    assert report["fp32"]["greedy"] == {"sentences": len(sentences), "identical": len(sentences)}


@pytest.mark.parametrize("beam_size", [1, 4])
def test_beam_outputs_match_the_pytorch_reference(
    tiny_model_dir: Path, exported: Path, sentences: list[str], beam_size: int
) -> None:
    model, _ = load_model_dir(tiny_model_dir)
    sources = _sources(tiny_model_dir, sentences)
    tag = TAG["fr"]
    with torch.no_grad():
        reference = torch_beam_search(model, sources, tag, beam_size=beam_size, n_best=beam_size)
    options = DecodeOptions(beam_size=beam_size, n_best=beam_size, repetition_guard=False, cut_degenerate=False)
    runtime = beam_search(OnnxModel(exported), sources, [tag] * len(sources), options)
    for ref, got in zip(reference, runtime, strict=True):
        assert [h.tokens for h in got] == [h.tokens for h in ref]
        assert np.allclose([h.score for h in got], [h.score for h in ref], atol=1e-4)


def test_a_corrupt_file_stops_loading_with_its_name(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    with open(copy / "decoder_step.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(ModelFileError, match=r"decoder_step\.onnx.*sha256"):
        OnnxModel(copy)
    shutil.copyfile(exported / "decoder_step.onnx", copy / "decoder_step.onnx")
    (copy / "weights.bin").unlink()
    with pytest.raises(ModelFileError, match=r"weights\.bin: missing"):
        load_manifest(copy)


def _change_in_place(path: Path, offset: int) -> None:
    """Four bytes at `offset` changed, the file's size kept."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        changed = bytes(4) if handle.read(4) != bytes(4) else b"\xff" * 4
        handle.seek(offset)
        handle.write(changed)


def test_a_file_corrupted_after_a_load_is_caught_at_the_next(exported: Path, tmp_path: Path) -> None:
    """Files are hashed once per process while unchanged (a budget reloads models): a write since,
    of the same size and even within the clock's granularity of the last hash, is hashed again."""
    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    settled = time.time() - 60
    for file in copy.iterdir():
        os.utime(file, (settled, settled))
    load_manifest(copy)  # hashed, and remembered: the files are not recent
    _change_in_place(copy / "weights.bin", 100)
    with pytest.raises(ModelFileError, match=r"weights\.bin.*sha256"):
        load_manifest(copy)
    shutil.copyfile(exported / "weights.bin", copy / "weights.bin")
    load_manifest(copy)  # written just now: hashed, not remembered
    _change_in_place(copy / "weights.bin", 200)
    with pytest.raises(ModelFileError, match=r"weights\.bin.*sha256"):
        load_manifest(copy)


def test_a_model_exported_in_an_earlier_format_asks_to_be_exported_again(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["format_version"] = 2  # the decoder step that took a growing cache and beam origins
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=r"format 2.*reads format 3.*mtserve export"):
        OnnxModel(copy)


def test_manifest_lists_every_file_with_its_hash(exported: Path) -> None:
    manifest = load_manifest(exported)
    assert set(manifest.files.values()) == set(manifest.sha256)
    assert manifest.special_ids.language_tags == TAG
    assert manifest.directions == [("en", "fr"), ("fr", "en")]
    assert (exported / MANIFEST_FILE).is_file()


def _optimized_step_ops(model_dir: Path, tmp_path: Path) -> list[str]:
    """The decoder step's node types once onnxruntime has optimized it: its packed copy, which the
    runtime serves (service/runtime/packed.py)."""
    optimized = packed_graph(model_dir / load_manifest(model_dir).files["decoder"], "step", tmp_path, verify=False)
    assert optimized is not None
    return [node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node]


def test_each_fp32_step_product_takes_its_bias_and_relu_in_one_node(exported: Path, tmp_path: Path) -> None:
    """The step's activations are rows [B, D], for which onnxruntime joins a product, its bias and a
    ReLU into one Gemm: no product of a layer leaves an Add or a Relu of its own (docs/BENCHMARKS.md)."""
    layers = load_manifest(exported).decoder_layers
    ops = _optimized_step_ops(exported, tmp_path)
    # per layer: self-attention out, cross-attention query and out, the two feed-forward products
    assert ops.count("Gemm") + ops.count("FusedGemm") == 5 * layers + 1  # and the output projection
    assert ops.count("FusedGemm") == layers and "Relu" not in ops
    assert ops.count("MatMul") == layers  # Q, K and V, whose bias the attention node adds


def test_int8_rows_are_scaled_in_their_quantization_and_the_relu_goes(exported_int8: Path, tmp_path: Path) -> None:
    """Each activation's rows are scaled by one blocked QuantizeLinear (opset 21), with no Div over the
    activation, and the feed-forward ReLU is taken into its QuantizeLinear (export/quantize.py)."""
    manifest = load_manifest(exported_int8)
    assert manifest.opset == 21
    graph = onnx.load(str(exported_int8 / manifest.files["decoder"]), load_external_data=False)
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == 21
    producers = {output: node for node in graph.graph.node for output in node.output}
    products = [node for node in graph.graph.node if node.op_type == "MatMulIntegerToFloat"]
    assert products
    for product in products:
        codes = producers[product.input[0]]
        assert codes.op_type == "QuantizeLinear", product.name
        assert {a.name for a in codes.attribute} == {"axis", "block_size"}, product.name  # one block a row
        assert producers[codes.input[0]].op_type != "Div", product.name  # the activation itself
        assert producers[codes.input[2]].op_type == "QuantizeLinear", product.name  # the rows' zero points
    assert "Relu" not in [node.op_type for node in graph.graph.node]
    assert "Relu" not in _optimized_step_ops(exported_int8, tmp_path)


def test_the_runtime_imports_no_torch(exported: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from service.runtime.translator import Translator\n"
        "from service.runtime.fill_mask import FillMask\n"
        f"t = Translator.load(Path({str(exported)!r}))\n"
        "t.translate(['A dog runs.'], 'fr')\n"
        "FillMask.from_model(t.model).fill('A <mask> runs.')\n"
        "import service.api.app, service.api.server  # the HTTP service too\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model', 'export')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_command_line_works_where_torch_is_missing() -> None:
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # as in the runtime image: importing torch fails\n"
        "from service.cli import main\n"
        "main(['train', '--max-steps', '1'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "needs the training extra" in result.stderr


def test_calibrated_scales_without_int8_are_refused_with_the_flag_to_add(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "service.cli", "export", "--checkpoint", str(tiny_model_dir),
               "--out", str(tmp_path / "out"), "--activation-scales", "calibrated",
               "--data-dir", str(tiny_data_dir)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--activation-scales calibrated scales int8 activations: add --quantize int8" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pre_norm", [True, False])
def test_the_written_graphs_match_pytorch_for_both_norm_placements(pre_norm: bool) -> None:
    """The hand-written encoder and decoder step (fused attention) against the model's own
    encode, cross_kv and decode_step, over steps that start from an empty cache, widen to two
    beams per source and read each beam's history through the cache indirection, on sources
    of different lengths."""
    import onnxruntime as ort

    from export.decoder_graph import build_decoder_step
    from export.encoder_graph import build_encoder
    from export.exporter import network_of
    from model.config import ModelConfig
    from model.transformer import Transformer
    from service.runtime.kv_cache import SelfAttentionCache
    from service.runtime.sessions import run_step, step_feeds

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=64, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, pre_norm=pre_norm
    )
    model = Transformer(cfg).eval()
    encoder, decoder = (
        ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        for graph in (build_encoder(network_of(model)), build_decoder_step(network_of(model)))
    )
    src = torch.tensor([[9, 10, 11, 3], [12, 13, 3, 0], [14, 3, 0, 0]])
    mask = src != 0
    with torch.no_grad():
        memory = model.encode(src, mask)
        cross = model.cross_kv(memory)
        hidden, *onnx_cross = encoder.run(None, {"input_ids": src.numpy(), "attention_mask": mask.long().numpy()})
        real = mask.numpy()
        assert np.abs(hidden[real] - memory.numpy()[real]).max() < 1e-4
        for got, (k, v) in zip(np.array_split(np.array(onnx_cross), 2), cross, strict=True):
            for g, t in zip(got, (k, v), strict=True):
                assert np.abs(g.transpose(0, 2, 1, 3)[real] - t.numpy().transpose(0, 2, 1, 3)[real]).max() < 1e-4
        # Step 0 runs one row per source, then two beams each; rows then continue beams of their
        # own source in changing orders, as beam search picks them.
        ids, past = torch.tensor([[7], [8], [7]]), None
        cache = SelfAttentionCache(2, 4, 8, sentences=3, capacity=5, max_beams=2)
        choices = [[0, 0, 1, 1, 2, 2], [1, 0, 2, 2, 5, 4], [0, 0, 3, 2, 4, 5], [1, 1, 2, 3, 5, 5]]
        for step, rows in enumerate(choices):
            beams = cache.beams
            row_mask = mask.repeat_interleave(beams, 0)
            row_cross = [(k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0)) for k, v in cross]
            logits, past = model.decode_step(ids, row_mask, row_cross, past)
            feeds = step_feeds(2, 64, ["log_probs"], ids.numpy(), mask.long().numpy(), cache, onnx_cross)
            (log_probs,) = run_step(decoder, feeds)
            cache.advance()
            assert np.abs(log_probs - logits[:, -1].log_softmax(-1).numpy()).max() < 1e-4, f"step {step}"
            order = torch.tensor(rows)
            past = [(k[order], v[order]) for k, v in past]
            ids = torch.randint(9, 64, (len(rows), 1))  # any tokens: the beams' histories differ
            cache.reorder(np.asarray(rows))
        assert cache.length == 4
        with pytest.raises(ValueError, match="rows do not make"):
            cache.reorder(np.arange(5))
        with pytest.raises(ValueError, match="another sentence"):
            cache.reorder(np.asarray([0, 2, 2, 3, 4, 5]))


def test_nearest_weight_rounding_keeps_calibrated_scales_and_rounds_each_weight_alone(
    tiny_model_dir: Path, tiny_data_dir: Path, sentences: list[str], exported_int8_calibrated: Path, tmp_path: Path
) -> None:
    """`--weight-rounding nearest` with `--activation-scales calibrated`: the same constant scales,
    and weights that differ from the compensated export's only in their codes."""
    from export.exporter import export_model
    from model.corpus import read_lines

    english = read_lines(tiny_data_dir / "multi30k/train.en.gz")
    french = read_lines(tiny_data_dir / "multi30k/train.fr.gz")
    out = tmp_path / "nearest"
    export_model(tiny_model_dir, out, english + french, "int8", sentences,
                 calibration_text={"en": english[:40], "fr": french[:40]}, compensated_rounding=False)  # fmt: skip
    report = json.loads((out / "export_report.json").read_text())
    compensated = json.loads((exported_int8_calibrated / "export_report.json").read_text())
    assert report["int8_weights"] == "nearest codes"
    for graph in ("encoder.onnx", "decoder_step.onnx"):
        counts = report["int8_matmuls"][graph]
        assert counts["compensated_weights"] == 0 and counts["constant_scales"] == counts["matmuls"], graph
    assert (out / "encoder.onnx").read_bytes() == (exported_int8_calibrated / "encoder.onnx").read_bytes()
    assert report["sharing"]["weights_bytes_stored"] == compensated["sharing"]["weights_bytes_stored"]
    assert (out / "weights.bin").read_bytes() != (exported_int8_calibrated / "weights.bin").read_bytes()


@pytest.mark.parametrize("calibrated", [False, True])
def test_int8_export_is_smaller_and_keeps_translations_independent_of_the_batch(
    tiny_model_dir: Path, exported: Path, request: pytest.FixtureRequest, sentences: list[str], calibrated: bool
) -> None:
    exported_int8: Path = request.getfixturevalue("exported_int8_calibrated" if calibrated else "exported_int8")
    manifest = load_manifest(exported_int8)
    assert manifest.precision == "int8"
    assert (exported_int8 / "weights.bin").stat().st_size < (exported / "weights.bin").stat().st_size
    report = json.loads((exported_int8 / "export_report.json").read_text())
    assert report["int8"]["greedy"]["sentences"] == len(sentences)
    for graph in ("encoder.onnx", "decoder_step.onnx"):
        counts = report["int8_matmuls"][graph]
        nodes = onnx.load(str(exported_int8 / graph), load_external_data=False).graph.node
        row_ranges = [node for node in nodes if node.name.startswith("int8.row_range")]
        if calibrated:  # every activation at a constant scale: none of the per-row scaling's nodes left
            assert counts["constant_scales"] == counts["matmuls"] > 0 and not row_ranges, graph
        else:
            assert counts["constant_scales"] == 0 and row_ranges, graph
        assert counts["compensated_weights"] == counts["matmuls"], graph  # every weight rounded against calibration
    assert report["int8_activations"] == ("constant scales from calibration" if calibrated else "scaled per row")
    assert report["int8_weights"] == "rounding compensated on calibration"
    model = OnnxModel(exported_int8, intra_op_threads=2)
    sources = _sources(tiny_model_dir, sentences)
    tags = [TAG["fr"]] * len(sources)
    options = DecodeOptions(beam_size=4, n_best=2)
    batched = beam_search(model, sources, tags, options)
    for i in range(len(sources)):
        alone = beam_search(model, [sources[i]], [tags[i]], options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]], f"sentence {i}"
        assert np.allclose([h.score for h in alone], [h.score for h in batched[i]], atol=1e-4)


@pytest.mark.parametrize("vocab_size", [400, 8000, 1001])  # blocks of 25 and of 32; 1001 pads to blocks of 32
def test_the_step_top_k_is_a_full_sort_whatever_the_vocabulary_size(vocab_size: int) -> None:
    """The decoder step's blocked top-k gives what sorting the whole row gives: the best scores
    first, the lower id first among equal ones, however the vocabulary divides into blocks."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from export.decoder_graph import _top_k
    from export.graph_builder import Builder, make_model
    from service.graphs import DECODER_TOP_K

    b = Builder()
    _top_k(b, "log_probs", vocab_size)
    inputs = [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [None, vocab_size])]
    outputs = [helper.make_tensor_value_info("top_log_probs", TensorProto.FLOAT, [None, DECODER_TOP_K]),
               helper.make_tensor_value_info("top_ids", TensorProto.INT64, [None, DECODER_TOP_K])]  # fmt: skip
    session = ort.InferenceSession(make_model(b, "top_k", inputs, outputs).SerializeToString())
    rng = np.random.default_rng(vocab_size)
    rows = -rng.integers(0, 40, size=(6, vocab_size)).astype(np.float32) / 4  # many equal scores
    rows[0, -3:] = 1.0  # the best at the end of the vocabulary, in its last block
    top_scores, top_ids = session.run(["top_log_probs", "top_ids"], {"log_probs": rows})
    for row, scores, ids in zip(rows, top_scores, top_ids, strict=True):
        expected = np.lexsort((np.arange(vocab_size), -row))[:DECODER_TOP_K]
        assert ids.tolist() == expected.tolist()
        assert scores.tolist() == row[expected].tolist()
