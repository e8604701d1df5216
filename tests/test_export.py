"""Export a tiny trained model and hold the ONNX runtime to the PyTorch reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.validate import compare_logits
from model.artifacts import load_model_dir
from model.beam import beam_search as torch_beam_search
from service.conventions import EOS_ID, LANG_TAG_IDS
from service.manifest import MANIFEST_FILE, ModelFileError, load_manifest
from service.runtime.beam import DecodeOptions, beam_search
from service.runtime.sessions import OnnxModel
from tests.conftest import ROOT

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
    tag = LANG_TAG_IDS["fr"]
    with torch.no_grad():
        reference = torch_beam_search(model, sources, tag, beam_size=beam_size, n_best=beam_size)
    options = DecodeOptions(beam_size=beam_size, n_best=beam_size, repetition_guard=False)
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


def test_manifest_lists_every_file_with_its_hash(exported: Path) -> None:
    manifest = load_manifest(exported)
    assert set(manifest.files.values()) == set(manifest.sha256)
    assert manifest.special_ids.language_tags == LANG_TAG_IDS
    assert (exported / MANIFEST_FILE).is_file()


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
