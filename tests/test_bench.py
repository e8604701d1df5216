"""The benchmark's baselines decode what the runtime decodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.engines import TextbookDecoder
from model.artifacts import load_model_dir
from model.beam import beam_search
from service.conventions import EOS_ID
from tests.conftest import TAG

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("beam_size", [1, 3])
def test_textbook_loop_equals_the_kv_cache(tiny_model_dir: Path, sentences: list[str], beam_size: int) -> None:
    model, sp = load_model_dir(tiny_model_dir)
    sources = [[*ids, EOS_ID] for ids in sp.encode(sentences[:8])]
    tag = TAG["fr"]
    with torch.no_grad():
        cached = beam_search(model, sources, tag, beam_size=beam_size)
        textbook = beam_search(TextbookDecoder(model), sources, tag, beam_size=beam_size)  # type: ignore[arg-type]
    for a, b in zip(cached, textbook, strict=True):
        assert a[0].tokens == b[0].tokens
        assert a[0].score == pytest.approx(b[0].score, abs=1e-4)
