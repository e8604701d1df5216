"""Runaway output: degenerate hypotheses rank last; a source with only degenerate ones comes back cut and marked low."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.settings import Settings
from service.runtime.beam import Hypothesis
from service.runtime.degenerate import (
    LOW_QUALITY_PENALTY,
    degenerate,
    looping,
    max_sane_length,
    out_of_proportion,
    sane_first,
)

SOURCE = list(range(100, 120))  # 20 distinct tokens, EOS not included
SANE = list(range(200, 224))


def hyp(tokens: list[int], score: float, ended: bool = True) -> Hypothesis:
    return Hypothesis(tokens, score, score * len(tokens), ended)


def test_loops_are_repeated_three_grams_the_source_does_not_have() -> None:
    loop = [5, 6, 7, 8] * 6
    assert looping(loop, SOURCE) and not looping(SANE, SOURCE)
    assert not looping(loop, [5, 6, 7, 8] * 6)  # a repetitive source may get a repetitive translation
    assert not looping([5, 6, 7] * 3, SOURCE)  # too short to call


def test_out_of_proportion_follows_the_measured_bounds() -> None:
    assert not out_of_proportion(max_sane_length(20), 20) and out_of_proportion(max_sane_length(20) + 1, 20)
    assert out_of_proportion(3, 40) and not out_of_proportion(20, 40)
    assert not out_of_proportion(1, 4)  # a short source (a title) has no lower bound


def test_a_sane_hypothesis_goes_first_whatever_its_score() -> None:
    cut = hyp(SANE * 3, -0.1, ended=False)
    looped = hyp([5, 6, 7, 8] * 6, -0.2)
    sane = hyp(SANE, -0.9)
    assert degenerate(cut, SOURCE) and degenerate(looped, SOURCE) and not degenerate(sane, SOURCE)
    assert sane_first([cut, looped, sane], [*SOURCE, 2], n_best=2) == [sane, cut]


def test_only_degenerate_hypotheses_come_back_cut_and_marked_low() -> None:
    looped = hyp([1, 2, *([5, 6, 7, 8] * 40)], -0.3, ended=False)
    (best,) = sane_first([looped], [*SOURCE, 2], n_best=1)
    assert best.quality == "low" and best.score == pytest.approx(-0.3 - LOW_QUALITY_PENALTY)
    assert best.tokens == [1, 2, 5, 6, 7, 8]  # cut at the first repeated 3-gram
    assert not looping(best.tokens, SOURCE)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as c:
        yield c


NONSENSE = "zxqv " * 30


def test_the_native_api_flags_what_the_model_cannot_translate(client: TestClient) -> None:
    texts = ["A man is playing a guitar.", NONSENSE]
    results = client.post("/v1/translate", json={"texts": texts, "source": "en", "target": "fr"}).json()["translations"]
    good, bad = results
    assert good["quality"] == "ok" and "guitare" in good["text"]
    assert bad["quality"] == "low" and bad["score"] < good["score"] - LOW_QUALITY_PENALTY + 1
    assert bad["target_tokens"] < 64, "never a loop up to the length limit"


def test_every_route_returns_a_short_answer_for_nonsense(client: TestClient) -> None:
    out = client.post("/translate", json={"q": NONSENSE, "source": "en", "target": "fr"}).json()["translatedText"]
    assert len(out) < len(NONSENSE)
    html = client.post("/translate", json={"q": f"<p>{NONSENSE}</p>", "source": "en", "target": "fr", "format": "html"})
    assert len(html.json()["translatedText"]) < len(NONSENSE) + 7
