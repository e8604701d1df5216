"""Glossaries: whole-word, case-aware terms whose targets come out exactly as given, with the real model."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import glossaries
from service.api.app import create_app
from service.api.glossaries import OFF_LOOP_CHARS, OFF_LOOP_ENTRIES
from service.api.settings import Settings
from service.runtime.glossary import MAX_FILE_ENTRIES, Glossary, GlossaryError, build_glossary, load_glossary_dir
from service.runtime.protect import placeholder, protect, restore

EN_FR = {"source": "en", "target": "fr"}
TERMS = [{"source": "dog", "target": "toutou"}, {"source": "red shirt", "target": "chemise cramoisie"}]


def test_terms_match_whole_words_only_and_the_longest_wins() -> None:
    glossary = build_glossary([("dog", "toutou"), ("hot dog", "saucisse"), ("cat", "matou")])
    protected = protect("A dog, a hot dog, dogs, a bulldog and a cat.", glossary)
    assert protected.spans == ["toutou", "saucisse", "matou"]
    assert "dogs" in protected.text and "bulldog" in protected.text
    assert restore(protected.text, protected.spans) == "A toutou, a saucisse, dogs, a bulldog and a matou."


def test_matching_is_case_aware() -> None:
    glossary = build_glossary([("dog", "toutou"), ("Apple", "Apple Inc."), ("NASA", "la NASA")])
    protected = protect("Dog and dog. An apple, Apple and APPLE. NASA, nasa.", glossary)
    # a lower-case term matches any case and follows a capital; a capitalised one only as written
    assert protected.spans == ["Toutou", "toutou", "Apple Inc.", "la NASA"]
    assert "An apple," in protected.text and "APPLE" in protected.text and "nasa." in protected.text


def test_glossary_terms_and_urls_share_the_placeholders() -> None:
    glossary = build_glossary([("dog", "toutou")])
    protected = protect("See https://example.org/dog for the dog.", glossary)
    assert protected.spans == ["https://example.org/dog", "toutou"]


def test_placeholders_come_back_in_one_pass_whatever_their_spans_hold() -> None:
    spans = [f"https://example.org/{i}" for i in range(2000)]
    spans[0] = f"see {placeholder(11)}"  # a span that holds a later placeholder's code, kept as it is
    translation = " ".join(placeholder(i) for i in range(2000)).replace(
        placeholder(7), placeholder(7).replace("-", " - ")
    )
    started = time.perf_counter()
    restored = restore(f"{translation} {placeholder(3)}", spans)
    assert time.perf_counter() - started < 0.5
    # each span where its placeholder first came out, the hyphen spaced or not; a repeat left as written
    assert restored == " ".join(spans) + f" {placeholder(3)}"
    assert restore("Rien.", ["https://a.b/c", "x@y.fr"]) == "Rien. https://a.b/c x@y.fr"  # dropped ones appended


def test_e_mail_addresses_are_found_in_time_linear_in_the_text() -> None:
    protected = protect("Write to me+tag@mail.example.org, not x@y@z.com or ..a@b.co.")
    assert protected.spans == ["me+tag@mail.example.org", "y@z.com", "..a@b.co"]
    run = "a." * 100_000  # one run of an address's characters, 200,000 long, without an @
    started = time.perf_counter()
    assert protect(run).spans == [] and protect(f"{run} x@y.fr").spans == ["x@y.fr"]
    # the search tried an address from every character of the run: minutes for this text
    assert time.perf_counter() - started < 2.0


def test_a_glossary_of_the_largest_size_matches_in_time_linear_in_the_text() -> None:
    """Python's `re` tried the terms one by one at every word start: with an operator glossary of
    100,000 terms, 4 s for this text. The longest term still wins, with the same case rules."""
    consonants = "bcdfghjklmnpqrstvwxz"  # no filler term is a word of the text
    filler = ["".join(letters) for letters in itertools.product(consonants, repeat=4)][: MAX_FILE_ENTRIES - 4]
    pairs = [
        *((term, "x") for term in filler),
        ("dog", "toutou"),
        ("hot dog", "saucisse"),
        ("Apple", "Pomme"),
        ("ap", "?"),
    ]
    glossary = build_glossary(pairs, limit=MAX_FILE_ENTRIES)
    text = "A Dog, a hot dog, an apple and Apple. " * 500  # 19,000 characters
    started = time.perf_counter()
    protected = protect(text, glossary)
    assert time.perf_counter() - started < 1.0
    assert protected.spans == ["Toutou", "saucisse", "Pomme"] * 500
    assert protected.text.count("an apple and") == 500


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ([("", "x")], "glossary[0].source must be a non-empty string"),
        ([("a", 3)], "glossary[0].target must be a non-empty string"),
        ([("a" * 201, "b")], "over the glossary term limit (200)"),
        ([("a\tb", "c")], "one line without tabs"),
        ([("a", "b")] * 1001, "over the glossary entry limit (1000)"),
    ],
)
def test_bad_entries_name_the_entry_or_the_limit(pairs: list[tuple[object, object]], problem: str) -> None:
    with pytest.raises(GlossaryError, match=re.escape(problem)):
        build_glossary(pairs)


def test_a_glossary_directory_loads_each_tsv_and_names_a_bad_line(tmp_path: Path) -> None:
    (tmp_path / "animals.tsv").write_text("# pets\ndog\ttoutou\n\ncat\tmatou\n", encoding="utf-8")
    glossaries = load_glossary_dir(tmp_path)
    assert list(glossaries) == ["animals"] and glossaries["animals"].entries == (("dog", "toutou"), ("cat", "matou"))
    (tmp_path / "broken.tsv").write_text("dog\ttoutou\ncat matou\n", encoding="utf-8")
    with pytest.raises(GlossaryError, match=r"broken\.tsv line 2"):
        load_glossary_dir(tmp_path)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("glossaries")
    (directory / "animals.tsv").write_text("dog\ttoutou\ncat\tmatou\n", encoding="utf-8")
    with TestClient(create_app(Settings(glossary_dir=directory))) as c:
        yield c


def test_translate_with_a_glossary_list(client: TestClient) -> None:
    plain = client.post("/translate", json={"q": "A dog is running in the park.", **EN_FR}).json()["translatedText"]
    assert "chien" in plain
    r = client.post("/translate", json={"q": "A dog is running in the park.", "glossary": TERMS, **EN_FR})
    assert r.status_code == 200 and "toutou" in r.json()["translatedText"] and "chien" not in r.json()["translatedText"]
    r = client.post("/translate", json={"q": ["A man in a red shirt.", "A dog."], "glossary": TERMS, **EN_FR})
    first, second = r.json()["translatedText"]
    assert "chemise cramoisie" in first and "toutou" in second


def test_translate_with_a_named_glossary_from_the_directory(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "A cat sleeps on a dog.", "glossary": "animals", **EN_FR})
    assert r.status_code == 200 and "matou" in r.json()["translatedText"] and "toutou" in r.json()["translatedText"]
    r = client.post("/translate", json={"q": "A cat.", "glossary": "medical", **EN_FR})
    assert r.status_code == 400 and "'medical' is not loaded" in r.json()["error"] and "animals" in r.json()["error"]


def test_a_form_post_carries_the_glossary_as_json(client: TestClient) -> None:
    r = client.post(
        "/translate", data={"q": "A dog runs.", "glossary": '[{"source": "dog", "target": "toutou"}]', **EN_FR}
    )
    assert r.status_code == 200 and "toutou" in r.json()["translatedText"]
    r = client.post("/translate", data={"q": "A dog runs.", "glossary": "[{oops", **EN_FR})
    assert r.status_code == 400 and "glossary is not a valid JSON list" in r.json()["error"]


def test_html_and_the_native_api_take_glossaries(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "<p>A <b>dog</b> runs.</p>", "format": "html", "glossary": TERMS, **EN_FR})
    assert r.status_code == 200 and "<b>toutou</b>" in r.json()["translatedText"]
    r = client.post("/v1/translate", json={"texts": ["A dog runs."], "glossary": TERMS, **EN_FR})
    assert r.status_code == 200 and "toutou" in r.json()["translations"][0]["text"]
    r = client.post("/v1/translate", json={"texts": ["A cat runs."], "glossary": "animals", **EN_FR})
    assert "matou" in r.json()["translations"][0]["text"]


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_a_long_request_glossary_is_built_off_the_event_loop_and_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[bool] = []  # per glossary built: whether on the event loop
    real = build_glossary

    def recorded(*args: Any, **kwargs: Any) -> Glossary:
        built.append(_on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(glossaries, "build_glossary", recorded)
    many = [*TERMS, *({"source": f"word{i}x", "target": f"mot{i}x"} for i in range(2 * OFF_LOOP_ENTRIES))]
    assert len(json.dumps(many)) > OFF_LOOP_CHARS
    sent = (
        ("/translate", {"json": {"q": "A dog runs.", "glossary": many, **EN_FR}}),
        ("/translate", {"data": {"q": "A dog runs.", "glossary": json.dumps(many), **EN_FR}}),
        ("/v1/translate", {"json": {"texts": ["A dog runs."], "glossary": many, **EN_FR}}),
    )
    for route, body in sent:
        r = client.post(route, **body)
        assert r.status_code == 200 and "toutou" in r.text
    assert built == [False]  # built once, in a worker thread: the same entries again are the same glossary
    one = [{"source": "cat", "target": "minet"}]
    r = client.post("/translate", json={"q": "A cat runs.", "glossary": one, **EN_FR})
    assert r.status_code == 200 and "minet" in r.json()["translatedText"]
    assert built == [False, True]  # a short one costs less than the hand-off


def test_glossary_limits_are_4xx_naming_the_limit(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "a", "glossary": [{"source": "x" * 300, "target": "y"}], **EN_FR})
    assert r.status_code == 400 and "glossary term limit (200)" in r.json()["error"]
    r = client.post("/translate", json={"q": "a", "glossary": [{"source": "x", "target": "y"}] * 1001, **EN_FR})
    assert r.status_code == 400 and "glossary entry limit (1000)" in r.json()["error"]
    r = client.post("/translate", json={"q": "a", "glossary": [{"source": "x"}], **EN_FR})
    assert r.status_code == 400 and "glossary[0]" in r.json()["error"]
    r = client.post(
        "/v1/translate", json={"texts": ["a"], "glossary": [{"source": "x", "target": "y"}] * 1001, **EN_FR}
    )
    assert r.status_code == 422 and "glossary" in r.json()["error"] and "1000" in r.json()["error"]
