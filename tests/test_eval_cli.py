"""`mtserve eval` on a pair of plain-text files: scores printed and recorded in eval.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.corpus import read_lines
from service.cli import main

pytestmark = pytest.mark.slow


def test_eval_on_a_file_pair_records_bleu_and_mlm(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    src, ref = tmp_path / "src.en", tmp_path / "ref.fr"
    src.write_text("\n".join(read_lines(tiny_data_dir / "multi30k/train.en.gz")[:30]) + "\n")
    ref.write_text("\n".join(read_lines(tiny_data_dir / "multi30k/train.fr.gz")[:30]) + "\n")
    hyps = tmp_path / "hyps.fr"
    argv = ["eval", "--model", str(model_dir), "--split", f"{src},{ref}", "--direction", "en-fr",
            "--beam-size", "3", "--data-dir", str(tiny_data_dir), "--output", str(hyps)]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    recorded = json.loads((model_dir / "eval.json").read_text())["src.en"]["en-fr"]
    assert printed["bleu"] == recorded["bleu"] > 50  # memorised training pairs
    assert recorded["sentences"] == 30 and recorded["beam_size"] == 3
    assert 0 <= printed["mlm"]["fr"]["top1"] <= printed["mlm"]["fr"]["top5"] <= 1
    assert len(hyps.read_text().splitlines()) == 30


def test_eval_rejects_an_unknown_direction(tiny_model_dir: Path) -> None:
    with pytest.raises(SystemExit, match="direction must be one of"):
        main(["eval", "--model", str(tiny_model_dir), "--direction", "en-de", "--no-write"])
