"""Golden check on the committed model: BLEU on the first 200 test2016 sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import corpus
from model.artifacts import load_model_dir
from model.evaluate import GOLDEN_SENTENCES, evaluate_split, score_translations
from model.train_config import load_config
from service.conventions import EVAL_FILE
from service.manifest import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.slow
GOLDEN_KEY = f"test2016[:{GOLDEN_SENTENCES}]"
DEFAULT_DATA = load_config(Path(__file__).resolve().parent.parent / "configs" / "default.toml", {}).data


def m30k_test2016(data_dir: Path, direction: tuple[str, str] = ("en", "fr")) -> tuple[list[str], list[str]]:
    return corpus.split_texts(DEFAULT_DATA, data_dir, "test2016", direction)


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
    sources, references = m30k_test2016(shared_data, (src_lang, tgt_lang))
    torch.set_num_threads(2)
    scores, _ = evaluate_split(
        model, sp, sources[:GOLDEN_SENTENCES], references[:GOLDEN_SENTENCES], tgt_lang, beam_size=5
    )
    assert recorded["floor"] == pytest.approx(recorded["bleu"] - 0.5)
    assert scores.bleu >= recorded["floor"], f"{direction}: BLEU {scores.bleu} below floor {recorded['floor']}"


def test_the_committed_onnx_model_keeps_the_bleu_of_pytorch(committed: Path, shared_data: Path) -> None:
    """The exported graphs lose at most 0.5 BLEU against the PyTorch floor."""
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator

    recorded = json.loads((committed / EVAL_FILE).read_text())[GOLDEN_KEY]["en-fr"]
    sources, references = m30k_test2016(shared_data)
    translator = Translator.load(committed, intra_op_threads=2)
    hyps = translator.translate(sources[:GOLDEN_SENTENCES], "fr", DecodeOptions(beam_size=5))
    scores = score_translations([h[0].text for h in hyps], references[:GOLDEN_SENTENCES], 0.0)
    assert scores.bleu >= recorded["floor"] - 0.5


def test_fill_mask_on_a_held_out_sentence(committed: Path, shared_data: Path) -> None:
    from service.runtime.fill_mask import FillMask
    from service.runtime.sessions import OnnxModel

    sentence = m30k_test2016(shared_data)[0][1]  # "A Boston Terrier is running on lush green grass..."
    masked = sentence.replace(" running ", " <mask> ", 1)
    assert masked != sentence
    (row,) = FillMask.from_model(OnnxModel(committed, intra_op_threads=2)).fill(masked, top_k=5)
    scores = [c.score for c in row]
    assert len(row) == 5 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert "running" in [c.token_str for c in row]


def test_the_committed_model_translates_a_sentence_the_same_alone_and_in_a_batch(
    committed: Path, shared_data: Path
) -> None:
    """Guards against shipping graphs whose results depend on batch composition (dynamic int8 does)."""
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator

    sources = m30k_test2016(shared_data)[0][:40]
    translator = Translator.load(committed, intra_op_threads=2)
    batched = translator.translate(sources, "fr", DecodeOptions(beam_size=5))
    for i in (0, 17, 39):
        alone = translator.translate([sources[i]], "fr", DecodeOptions(beam_size=5))[0][0]
        assert alone.text == batched[i][0].text
        assert alone.score == pytest.approx(batched[i][0].score, abs=1e-4)


COPIED = [
    ("Visit https://example.com/page?id=42 for more.", "fr", ["https://example.com/page?id=42"]),
    ("Write to anna.berg@example.org today.", "fr", ["anna.berg@example.org"]),
    ("Consultez https://exemple.fr/aide pour plus d'informations.", "en", ["https://exemple.fr/aide"]),
    ("Tom bought 3 apples and 12 oranges.", "fr", ["Tom", "12"]),
    ("Call me at 10:30 tomorrow.", "fr", ["10:30"]),
    ("The code is AB-4721.", "fr", ["AB-4721"]),
    ("A man in a red shirt is reading a book in New York.", "fr", ["New York"]),
    ("The iPhone is on the table next to the NASA poster.", "fr", ["iPhone", "NASA"]),
    ("Marie habite à Lyon depuis 2015.", "en", ["Lyon", "2015"]),
    ("Le code est XK-2091.", "en", ["XK-2091"]),
    ("John Smith", "fr", ["John Smith"]),
    ("3.14", "fr", ["3.14"]),
    ("Dr. Ehud Ur", "fr", ["Dr. Ehud Ur"]),
    ("Dr. Ehud Ur is reading a book in the park.", "fr", ["Dr. Ehud Ur"]),
    ("Marie Curie", "fr", ["Marie Curie"]),
]


@pytest.mark.parametrize(("source", "target", "kept"), COPIED)
def test_numbers_urls_and_casing_come_through_intact(
    committed: Path, source: str, target: str, kept: list[str]
) -> None:
    """URLs and e-mail addresses travel as placeholders (service/runtime/protect.py); numbers,
    names and odd casing the model copies itself (copy augmentation in the recipe)."""
    from service.runtime.translator import Translator

    text = Translator.load(committed, intra_op_threads=2).translate([source], target)[0][0].text
    for span in kept:
        assert span in text, f"{source!r} -> {text!r} lost {span!r}"
