"""The HTTP API through the ASGI app, on the committed default model."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.settings import Settings

SENTENCE = "A man is playing a guitar."


def client_for(**settings: object) -> TestClient:
    return TestClient(create_app(Settings(**settings)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with client_for() as c:
        yield c


def french(text: str) -> bool:
    return any(word in text.lower() for word in ("homme", "guitare", "joue"))


# ---- LibreTranslate format -----------------------------------------------------------------


def test_translate_a_string(client: TestClient) -> None:
    r = client.post("/translate", json={"q": SENTENCE, "source": "en", "target": "fr"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"translatedText"}
    assert french(body["translatedText"])


def test_translate_served_ahead_of_fastapi_keeps_its_schema_methods_errors_and_metrics(client: TestClient) -> None:
    """POST /translate runs on a plain route ahead of FastAPI's (service/api/direct_routes.py): what a
    client and an operator see of it is FastAPI's declaration."""
    schema = client.get("/openapi.json").json()["paths"]["/translate"]
    assert set(schema) == {"post"} and "application/x-www-form-urlencoded" in schema["post"]["requestBody"]["content"]
    refused = 'mtserve_http_requests_total{direction="none",route="/translate",status_class="4xx"}'

    def refusals() -> float:
        line = next((x for x in client.get("/metrics").text.splitlines() if x.startswith(refused)), f"{refused} 0")
        return float(line.split()[-1])

    before = refusals()
    wrong_method = client.get("/translate")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert refusals() == before + 1
    missing = client.post("/translate", json={"source": "en", "target": "fr"})
    assert missing.status_code == 400 and missing.json() == {"error": "Invalid request: missing q parameter"}
    form = client.post("/translate", data={"q": SENTENCE, "source": "en", "target": "fr"})
    assert form.status_code == 200 and french(form.json()["translatedText"])
    assert form.headers["x-request-id"] and form.headers["x-model-sha"]
    metrics = client.get("/metrics").text
    assert refused in metrics
    assert 'mtserve_http_requests_total{direction="en-fr",route="/translate",status_class="2xx"}' in metrics


def test_translate_a_list_keeps_order_and_empty_entries(client: TestClient) -> None:
    q = [SENTENCE, "", "Two dogs are running on the beach."]
    r = client.post("/translate", json={"q": q, "source": "en", "target": "fr"})
    assert r.status_code == 200
    out = r.json()["translatedText"]
    assert len(out) == 3 and french(out[0]) and out[1] == "" and "chien" in out[2]


def test_translate_a_form_body(client: TestClient) -> None:
    r = client.post("/translate", data={"q": "Un homme joue de la guitare.", "source": "fr", "target": "en"})
    assert r.status_code == 200
    assert "guitar" in r.json()["translatedText"]


def test_multipart_form_body(client: TestClient) -> None:
    r = client.post("/translate", files={"q": (None, SENTENCE), "source": (None, "en"), "target": (None, "fr")})
    assert r.status_code == 200 and french(r.json()["translatedText"])


def test_auto_source_reports_the_detected_language(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "Un chien noir court dans l'herbe.", "source": "auto", "target": "en"})
    body = r.json()
    assert body["detectedLanguage"]["language"] == "fr"
    assert 50 < body["detectedLanguage"]["confidence"] <= 100
    assert "dog" in body["translatedText"]
    r = client.post("/translate", json={"q": ["Un chien.", "A dog."], "source": "auto", "target": "fr"})
    assert [d["language"] for d in r.json()["detectedLanguage"]] == ["fr", "en"]
    assert r.json()["translatedText"][0] == "Un chien."  # already in the target language: unchanged


def test_alternatives_are_distinct_from_the_translation(client: TestClient) -> None:
    r = client.post("/translate", json={"q": SENTENCE, "source": "en", "target": "fr", "alternatives": 3})
    body = r.json()
    assert 1 <= len(body["alternatives"]) <= 3
    assert body["translatedText"] not in body["alternatives"]
    assert len(set(body["alternatives"])) == len(body["alternatives"])


def test_paragraphs_and_sentences_are_split_and_rejoined(client: TestClient) -> None:
    text = "A man is playing a guitar. A dog runs.\n\nTwo children are swimming."
    r = client.post("/translate", json={"q": text, "source": "en", "target": "fr"})
    out = r.json()["translatedText"]
    assert out.count("\n\n") == 1
    first, second = out.split("\n\n")
    assert french(first) and "chien" in first and "enfants" in second


def test_html_keeps_tags_and_attributes(client: TestClient) -> None:
    html = '<p class="intro">A man in a <b>red</b> shirt is playing <a href="/x?a=1&amp;b=2">the guitar</a>.</p>'
    r = client.post("/translate", json={"q": html, "source": "en", "target": "fr", "format": "html"})
    out = r.json()["translatedText"]
    assert out.startswith('<p class="intro">') and out.endswith("</p>")
    assert '<a href="/x?a=1&amp;b=2">' in out and "</a>" in out and "<b>" in out and "</b>" in out
    assert "rouge" in out and "guitare" in out
    assert out.index("<b>") < out.index("</b>") and out.index("<a ") < out.index("</a>")


def test_html_texts_in_one_request_each_keep_their_markup(client: TestClient) -> None:
    """A list of HTML texts goes to the model in one call (their sentences share batches); each
    comes back in its place, a text with nothing to translate as it was."""
    texts = ["<p>A <b>dog</b> runs.</p>", "<br>", "<i>Two children</i> play in the snow."]
    r = client.post("/translate", json={"q": texts, "source": "en", "target": "fr", "format": "html"})
    first, empty, third = r.json()["translatedText"]
    assert first.startswith("<p>") and "<b>" in first and "chien" in first
    assert empty == "<br>"
    assert third.startswith("<i>") and "enfants" in third and "neige" in third


def test_html_nested_so_deep_it_would_translate_many_times_its_length_is_refused() -> None:
    """Each element's own text is translated too (it places the element): nested a hundred deep,
    1,607 characters of HTML gave 46,249 to translate. At most 4 times the character
    limit: a sentence inside a link, bold and italic at once still goes through."""
    with client_for(char_limit=2_000) as small:
        deep = "<p>" + "<b>dogs run " * 100 + "</b>" * 100 + "</p>"
        r = small.post(
            "/translate", json={"q": ["<p>A dog.</p>", deep], "source": "en", "target": "fr", "format": "html"}
        )
        assert r.status_code == 400
        message = r.json()["error"]
        assert "q[1]" in message and "exceeds text limit (8000)" in message and "nests its HTML elements" in message
        wrapped = '<p><a href="#"><b><i>' + "A dog runs in the snow. " * 80 + "</i></b></a></p>"  # 1,920 characters
        r = small.post("/translate", json={"q": wrapped, "source": "en", "target": "fr", "format": "html"})
        assert r.status_code == 200 and r.json()["translatedText"].startswith('<p><a href="#"><b><i>')


def test_languages_and_frontend_settings(client: TestClient) -> None:
    assert client.get("/languages").json() == [
        {"code": "en", "name": "English", "targets": ["en", "fr"]},
        {"code": "fr", "name": "French", "targets": ["en", "fr"]},
    ]
    settings = client.get("/frontend/settings").json()
    assert settings["charLimit"] == 5000 and settings["supportedFilesFormat"] == [
        ".txt", ".odt", ".odp", ".docx", ".pptx", ".epub", ".html", ".htm", ".srt"
    ]  # fmt: skip
    assert settings["language"]["source"]["code"] == "auto"


def test_detect(client: TestClient) -> None:
    r = client.post("/detect", data={"q": "Bonjour tout le monde, comment allez-vous ?"})
    first = r.json()[0]
    assert first["language"] == "fr" and first["confidence"] > 50


def test_translate_file_then_download(client: TestClient) -> None:
    files = {"file": ("captions.txt", f"{SENTENCE}\nA dog runs.\n".encode())}
    r = client.post("/translate_file", data={"source": "en", "target": "fr"}, files=files)
    assert r.status_code == 200
    url = r.json()["translatedFileUrl"]
    download = client.get(url)
    assert download.status_code == 200
    lines = download.text.split("\n")
    assert len(lines) == 3 and french(lines[0]) and "chien" in lines[1]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"source": "en", "target": "fr"}, 400, "q"),
        ({"q": 5, "source": "en", "target": "fr"}, 400, "q"),
        ({"q": [1, 2], "source": "en", "target": "fr"}, 400, "q"),
        ({"q": "x", "target": "fr"}, 400, "source"),
        ({"q": "x", "source": "en"}, 400, "target"),
        ({"q": "x", "source": "de", "target": "fr"}, 400, "de"),
        ({"q": "x", "source": "en", "target": "auto"}, 400, "auto"),
        ({"q": "x", "source": "en", "target": "fr", "format": "pdf"}, 400, "pdf"),
        ({"q": "x", "source": "en", "target": "fr", "alternatives": "many"}, 400, "alternatives"),
        ({"q": "x", "source": "en", "target": "fr", "alternatives": 4}, 400, "alternatives"),
        ({"q": ["x"] * 65, "source": "en", "target": "fr"}, 400, "text limit (64)"),
        ({"q": "x" * 5001, "source": "en", "target": "fr"}, 400, "text limit (5000)"),
    ],
)
def test_libretranslate_errors_name_the_field(
    client: TestClient, body: dict[str, object], status: int, names: str
) -> None:
    r = client.post("/translate", json=body)
    assert r.status_code == status
    assert names in r.json()["error"]


def test_malformed_bodies_are_400_not_500(client: TestClient) -> None:
    r = client.post("/translate", content=b'{"q": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post("/translate", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post(
        "/translate",
        content=b"q=%ff%fe&source=en&target=fr",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]


def test_a_body_over_the_size_limit_is_413(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "a " * 600_000, "source": "en", "target": "fr"})
    assert r.status_code == 413 and "size limit" in r.json()["error"]


def test_every_response_carries_request_id_and_model_sha(client: TestClient) -> None:
    for r in (client.get("/health"), client.post("/translate", json={}), client.get("/nowhere")):
        assert len(r.headers["x-request-id"]) >= 16
        assert len(r.headers["x-model-sha"]) == 16
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


# ---- native API ------------------------------------------------------------------------------


def test_v1_translate_returns_scored_hypotheses(client: TestClient) -> None:
    r = client.post(
        "/v1/translate", json={"texts": [SENTENCE, "A dog runs."], "source": "en", "target": "fr", "num_hypotheses": 3}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "mtserve-en-fr"
    first = body["translations"][0]
    assert french(first["text"]) and first["source_tokens"] > 0 and first["target_tokens"] > 0
    scores = [first["score"]] + [a["score"] for a in first["alternatives"]]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)


def test_v1_translate_options_change_the_search(client: TestClient) -> None:
    base = {"texts": [SENTENCE], "source": "en", "target": "fr"}
    short = client.post("/v1/translate", json={**base, "max_length": 3}).json()["translations"][0]
    assert short["target_tokens"] <= 3
    greedy = client.post("/v1/translate", json={**base, "beam_size": 1, "return_scores": False}).json()
    assert "score" not in greedy["translations"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"texts": [], "target": "fr"}, "texts"),
        ({"texts": "not a list", "target": "fr"}, "texts"),
        ({"texts": ["x"], "target": "de"}, "target"),
        ({"texts": ["x"], "source": "xx", "target": "fr"}, "source"),
        ({"texts": ["x"], "target": "fr", "beam_size": 0}, "beam_size"),
        ({"texts": ["x"], "target": "fr", "beam_size": 1_000_000}, "beam_size"),
        ({"texts": ["x"], "target": "fr", "beam_size": 2, "num_hypotheses": 3}, "num_hypotheses"),
        ({"texts": ["x"], "target": "fr", "length_penalty": -1}, "length_penalty"),
        ({"texts": ["x"], "target": "fr", "max_length": 0}, "max_length"),
        ({"texts": ["x"], "target": "fr", "colour": "blue"}, "colour"),
        ({"texts": ["x" * 5001], "target": "fr"}, "texts[0]"),
    ],
)
def test_v1_errors_name_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    r = client.post("/v1/translate", json=body)
    assert r.status_code == 422
    assert field in r.json()["error"]


def test_fill_mask_in_the_pipeline_shape(client: TestClient) -> None:
    r = client.post("/v1/fill-mask", json={"text": "A man is <mask> a guitar.", "top_k": 4})
    rows = r.json()
    assert len(rows) == 4 and set(rows[0]) == {"score", "token", "token_str", "sequence"}
    assert [c["score"] for c in rows] == sorted((c["score"] for c in rows), reverse=True)
    assert rows[0]["sequence"] == f"A man is {rows[0]['token_str']} a guitar."
    two = client.post("/v1/fill-mask", json={"text": "A [MASK] is playing a <mask>.", "top_k": 2}).json()
    assert len(two) == 2 and all(len(row) == 2 for row in two)
    chosen = client.post("/v1/fill-mask", json={"text": "A man is <mask> a guitar.", "targets": ["playing", "eating"]})
    assert {c["token_str"] for c in chosen.json()} == {"playing", "eating"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "no mask here"}, "text"),
        ({"text": ""}, "text"),
        ({"text": "A <mask>.", "top_k": 0}, "top_k"),
        ({"text": "A <mask>.", "top_k": 21}, "top_k"),
        ({"text": "A <mask>.", "targets": ["zzqxv"]}, "targets"),
    ],
)
def test_fill_mask_errors_name_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    r = client.post("/v1/fill-mask", json=body)
    assert r.status_code == 422 and field in r.json()["error"]


# ---- operations, access -----------------------------------------------------------------------


def test_health_ready_metrics_docs_page(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["files"]["state"] == "ok" and health["files"]["free_bytes"] > 0
    assert client.get("/ready").json()["status"] == "ready"
    metrics = client.get("/metrics").text
    assert 'mtserve_model_info{name="mtserve-en-fr"' in metrics
    assert "mtserve_batch_sentences_bucket" in metrics
    assert client.get("/openapi.json").json()["paths"]["/translate"]["post"]
    assert client.get("/docs").status_code == 200
    assert 'id="translate-btn"' in client.get("/").text


def test_api_keys(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cret-key-value"
    caplog.set_level(logging.DEBUG)
    with client_for(api_keys=[secret], require_api_key=True) as c:
        body = {"q": SENTENCE, "source": "en", "target": "fr"}
        assert c.post("/translate", json=body).status_code == 400
        assert c.post("/translate", json={**body, "api_key": "wrong"}).status_code == 403
        assert c.post("/translate", json={**body, "api_key": secret}).status_code == 200
        assert c.post("/translate", json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        native = {"texts": [SENTENCE], "target": "fr"}
        assert c.post("/v1/translate", json=native).status_code == 401
        assert c.post("/v1/translate", json=native, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.post("/v1/translate", json=native, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert c.get("/frontend/settings").json()["keyRequired"] is True
    assert secret not in caplog.text


def test_rate_limit_is_429_with_retry_after() -> None:
    with client_for(req_limit=2) as c:
        codes = [c.post("/detect", data={"q": "Hello there"}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/detect", data={"q": "Hello there"})
        assert int(r.headers["retry-after"]) >= 1 and "Slowdown" in r.json()["error"]


def test_made_up_keys_do_not_open_new_rate_windows() -> None:
    """Without configured keys, a key names nobody: each request counts against the address."""
    with client_for(req_limit=2) as c:
        codes = [c.post("/detect", data={"q": "Hello there", "api_key": f"made-up-{i}"}).status_code for i in range(3)]
        assert codes == [200, 200, 429]
        native = {"texts": [SENTENCE], "target": "fr"}
        assert c.post("/v1/translate", json=native, headers={"Authorization": "Bearer other"}).status_code == 429


def test_a_configured_key_has_a_window_of_its_own() -> None:
    secret = "k-" + "9" * 20
    with client_for(req_limit=2, api_keys=[secret]) as c:
        anonymous = [c.post("/detect", data={"q": "Hello there"}).status_code for _ in range(3)]
        keyed = [c.post("/detect", data={"q": "Hello there", "api_key": secret}).status_code for _ in range(3)]
        assert anonymous == [200, 200, 429] and keyed == [200, 200, 429]
        assert c.post("/detect", data={"q": "Hello there", "api_key": "made-up"}).status_code == 403


def test_a_fault_in_inference_fails_only_its_batch(caplog: pytest.LogCaptureFixture) -> None:
    with client_for(fault_marker="FAULT-NOW") as c:
        bad = c.post("/translate", json={"q": "FAULT-NOW please", "source": "en", "target": "fr"})
        assert bad.status_code == 500
        error_id = bad.json()["error"].split("error id ")[1].rstrip(")")
        assert error_id in caplog.text and "Traceback" not in bad.text
        good = c.post("/translate", json={"q": SENTENCE, "source": "en", "target": "fr"})
        assert good.status_code == 200 and french(good.json()["translatedText"])


def test_segments_without_letters_come_back_unchanged(client: TestClient) -> None:
    texts = ["😀", "3.14", "12:30 – 14:00", "!!! ???", "€ 45,00", "👍🏽  🎉"]
    lt = client.post("/translate", json={"q": texts, "source": "en", "target": "fr"})
    assert lt.status_code == 200 and lt.json()["translatedText"] == texts
    native = client.post("/v1/translate", json={"texts": texts, "source": "en", "target": "fr"})
    assert [t["text"] for t in native.json()["translations"]] == texts
    assert all(t["target_tokens"] == 0 for t in native.json()["translations"])
    mixed = client.post("/translate", json={"q": "A man is playing a guitar. 😀", "source": "en", "target": "fr"})
    assert french(mixed.json()["translatedText"]) and mixed.json()["translatedText"].endswith("😀")


def test_language_codes_are_case_insensitive_as_in_libretranslate(client: TestClient) -> None:
    upper = client.post("/translate", json={"q": "A man is playing a guitar.", "source": "EN", "target": "Fr"})
    assert upper.status_code == 200 and french(upper.json()["translatedText"])
    assert client.post("/translate", json={"q": "a", "source": "EN", "target": "XX"}).json() == {
        "error": "xx is not supported"
    }


@pytest.mark.parametrize("route", ["/translate", "/detect"])
def test_deep_nesting_is_libretranslates_400(client: TestClient, route: str) -> None:
    body = "[" * 100_000 + "]" * 100_000
    r = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "Invalid JSON format"}


def test_detect_takes_a_list_and_answers_at_most_three_candidates(client: TestClient) -> None:
    one = client.post("/detect", json={"q": "Un homme joue de la guitare dans la rue."}).json()
    assert one[0]["language"] == "fr" and 1 <= len(one) <= 3
    many = client.post("/detect", json={"q": ["Un homme joue de la guitare.", "Une femme lit un livre au parc."]})
    assert many.status_code == 200 and many.json()[0]["language"] == "fr" and len(many.json()) <= 3
    long_text = "Un chien court dans le parc. " * 300  # beyond the translation character limit
    assert client.post("/detect", json={"q": long_text}).status_code == 200


def test_spec_answers_as_libretranslate_for_dialects_instance_check(client: TestClient) -> None:
    spec = client.get("/spec")
    assert spec.status_code == 200
    body = spec.json()
    assert body["swagger"] == "2.0" and body["info"]["title"] == "LibreTranslate"
    assert {"/translate", "/detect", "/languages", "/translate_file", "/frontend/settings"} <= set(body["paths"])
    assert client.get("/openapi.json").json()["info"]["title"] == "mtserve"


def test_pleromas_upper_case_source(client: TestClient) -> None:
    body = {"q": "<p>A man is playing a guitar.</p>", "source": "EN", "target": "fr", "format": "html"}
    assert french(client.post("/translate", json=body).json()["translatedText"])


def test_translated_files_are_named_as_libretranslate_names_them(client: TestClient) -> None:
    files = {"file": ("captions.txt", f"{SENTENCE}\n".encode())}
    url = client.post("/translate_file", data={"source": "en", "target": "fr"}, files=files).json()["translatedFileUrl"]
    assert url.startswith("http")
    disposition = client.get(url).headers["content-disposition"]
    assert disposition == 'attachment; filename="captions_fr.txt"'


def test_an_html_file_keeps_its_markup(client: TestClient) -> None:
    page = '<html><body><h1 class="t">A man is playing a guitar.</h1><p>A <b>dog</b> runs.</p></body></html>'
    files = {"file": ("page.html", page.encode())}
    url = client.post("/translate_file", data={"source": "en", "target": "fr"}, files=files).json()["translatedFileUrl"]
    out = client.get(url).text
    assert out.startswith('<html><body><h1 class="t">') and out.endswith("</p></body></html>")
    assert "guitare" in out and "<b>" in out and "chien" in out


def test_a_subtitle_file_keeps_its_numbering_and_timings(client: TestClient) -> None:
    import srt

    cues = (
        "1\n00:00:01,000 --> 00:00:03,500\nA man is playing a guitar.\n\n"
        "2\n00:00:04,000 --> 00:00:06,250\nTwo dogs run\non the beach.\n\n"
        "3\n00:00:07,000 --> 00:00:08,000\n♪ ♪\n\n"
    )
    files = {"file": ("film.srt", cues.encode())}
    url = client.post("/translate_file", data={"source": "en", "target": "fr"}, files=files).json()["translatedFileUrl"]
    before, after = list(srt.parse(cues)), list(srt.parse(client.get(url).text))
    assert [(c.index, c.start, c.end) for c in after] == [(c.index, c.start, c.end) for c in before]
    assert "guitare" in after[0].content and "chien" in after[1].content and after[2].content == "♪ ♪"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("film.srt", b"this is not a subtitle file", "not valid SRT"),
        ("page.html", b"\xff\xfe\x00binary", "not UTF-8 HTML"),
        ("slides.key", b"whatever", "file format not supported"),
    ],
)
def test_a_bad_or_mislabelled_file_is_a_400_naming_the_problem(
    client: TestClient, name: str, content: bytes, problem: str
) -> None:
    r = client.post("/translate_file", data={"source": "en", "target": "fr"}, files={"file": (name, content)})
    assert r.status_code == 400 and problem in r.json()["error"]
