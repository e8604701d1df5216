"""Golden check on the committed model: BLEU on the first 200 test2016 sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import corpus
from model.artifacts import load_model_dir
from model.evaluate import DEFAULT_MODEL_DIR, GOLDEN_SENTENCES, evaluate_split
from service.conventions import EVAL_FILE

pytestmark = pytest.mark.slow
GOLDEN_KEY = f"test2016[:{GOLDEN_SENTENCES}]"


@pytest.fixture(scope="module")
def committed() -> Path:
    if not (DEFAULT_MODEL_DIR / EVAL_FILE).exists():
        pytest.fail(f"no committed model with {EVAL_FILE} at {DEFAULT_MODEL_DIR}")
    return DEFAULT_MODEL_DIR


@pytest.mark.parametrize("direction", ["en-fr", "fr-en"])
def test_bleu_on_first_200_test2016_sentences_holds_its_floor(
    committed: Path, shared_data: Path, direction: str
) -> None:
    recorded = json.loads((committed / EVAL_FILE).read_text())[GOLDEN_KEY][direction]
    model, sp = load_model_dir(committed)
    src_lang, tgt_lang = direction.split("-")
    sources, references = corpus.split_texts(shared_data, "test2016", (src_lang, tgt_lang))
    torch.set_num_threads(2)
    scores, _ = evaluate_split(
        model, sp, sources[:GOLDEN_SENTENCES], references[:GOLDEN_SENTENCES], tgt_lang, beam_size=5
    )
    assert recorded["floor"] == pytest.approx(recorded["bleu"] - 0.5)
    assert scores.bleu >= recorded["floor"], f"{direction}: BLEU {scores.bleu} below floor {recorded['floor']}"
