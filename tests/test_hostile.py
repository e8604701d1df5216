"""Hostile input, one test each: a clear 4xx or a correct translation, and the server stays healthy."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.settings import Settings

EN_FR = {"source": "en", "target": "fr"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as c:
        yield c


@pytest.fixture(autouse=True)
def stays_healthy(client: TestClient) -> Iterator[None]:
    yield
    assert client.get("/health").status_code == 200
    ok = client.post("/translate", json={"q": "A dog runs.", **EN_FR})
    assert ok.status_code == 200 and "chien" in ok.json()["translatedText"]


def _error(response: object, status: int, *words: str) -> None:
    r = response
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    message = r.json()["error"]  # type: ignore[attr-defined]
    assert all(w in message for w in words), message
    assert "Traceback" not in message


def test_invalid_json(client: TestClient) -> None:
    _error(client.post("/translate", content=b'{"q": "a",', headers={"content-type": "application/json"}), 400, "JSON")
    _error(client.post("/v1/translate", content=b"{", headers={"content-type": "application/json"}), 422, "JSON")


def test_wrong_types(client: TestClient) -> None:
    _error(client.post("/translate", json={"q": {"a": 1}, **EN_FR}), 400, "q")
    _error(client.post("/translate", json={"q": "a", "source": 1, "target": "fr"}), 400, "source")
    _error(client.post("/v1/translate", json={"texts": [1, 2], "target": "fr"}), 422, "texts")
    _error(client.post("/v1/fill-mask", json={"text": ["<mask>"]}), 422, "text")


def test_empty_and_whitespace_text(client: TestClient) -> None:
    _error(client.post("/translate", json={"q": "", **EN_FR}), 400, "q")
    r = client.post("/translate", json={"q": ["", "   ", "\n\t"], **EN_FR})
    assert r.json()["translatedText"] == ["", "   ", "\n\t"]
    r = client.post("/v1/translate", json={"texts": ["  "], "target": "fr", "source": "en"})
    assert r.json()["translations"][0]["text"] == "  "


def test_a_one_megabyte_body(client: TestClient) -> None:
    body = json.dumps({"q": "a" * 1_000_000, **EN_FR}).encode()
    assert 1_000_000 < len(body) < 1 << 20
    _error(client.post("/translate", content=body, headers={"content-type": "application/json"}), 400, "text limit")
    _error(
        client.post("/translate", content=b"x" * (2 << 20), headers={"content-type": "application/json"}), 413, "size"
    )


def test_a_hundred_thousand_characters(client: TestClient) -> None:
    _error(client.post("/translate", json={"q": "word " * 20_000, **EN_FR}), 400, "text limit (5000)")
    _error(client.post("/v1/translate", json={"texts": ["word " * 20_000], "target": "fr"}), 422, "texts[0]")


def test_a_q_of_ten_thousand_elements(client: TestClient) -> None:
    _error(client.post("/translate", json={"q": ["a"] * 10_000, **EN_FR}), 400, "text limit (64)")
    _error(client.post("/v1/translate", json={"texts": ["a"] * 10_000, "target": "fr"}), 422, "texts")


def test_nul_and_control_characters(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "A dog\x00 runs\x07 in\x1b the park.\x7f", **EN_FR})
    assert r.status_code == 200 and "chien" in r.json()["translatedText"]
    assert not any(ord(c) < 32 for c in r.json()["translatedText"])


def test_invalid_utf8_in_form_bodies(client: TestClient) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    _error(client.post("/translate", content=b"q=%C3%28&source=en&target=fr", headers=form), 400, "UTF-8")
    _error(client.post("/translate", content=b"q=\xff\xfe&source=en&target=fr", headers=form), 400, "UTF-8")
    multipart = client.post(
        "/translate", files={"q": (None, b"\xff\xfeA dog"), "source": (None, "en"), "target": (None, "fr")}
    )
    assert multipart.status_code in (200, 400)


def test_lone_surrogates(client: TestClient) -> None:
    body = b'{"q": "A dog \\ud800 runs.", "source": "en", "target": "fr"}'
    r = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and "chien" in r.json()["translatedText"]
    r = client.post("/v1/translate", content=b'{"texts": ["A \\udfff dog."], "target": "fr"}', headers=JSON)
    assert r.status_code == 200 and "chien" in r.json()["translations"][0]["text"]
    # pydantic refuses a lone surrogate in a plain string field: a 422 that names it
    _error(client.post("/v1/fill-mask", content=b'{"text": "A \\udfff <mask> runs."}', headers=JSON), 422, "text")


def test_emoji_and_right_to_left_text(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "A dog 🐕 runs in the park 🌳.", **EN_FR})
    assert r.status_code == 200 and "chien" in r.json()["translatedText"]
    r = client.post("/translate", json={"q": "مرحبا بالعالم שלום עולם", **EN_FR})
    assert r.status_code == 200 and isinstance(r.json()["translatedText"], str)
    r = client.post("/detect", json={"q": "🐕🐕🐕"})
    assert r.status_code == 200 and r.json()[0]["confidence"] == 0


def test_text_that_is_only_masks(client: TestClient) -> None:
    r = client.post("/translate", json={"q": "<mask>", **EN_FR})
    assert r.status_code == 200
    rows = client.post("/v1/fill-mask", json={"text": "<mask>", "top_k": 3}).json()
    assert len(rows) == 3 and all(0 <= c["score"] <= 1 for c in rows)
    many = client.post("/v1/fill-mask", json={"text": "<mask> " * 50, "top_k": 2}).json()
    assert len(many) == 50
    _error(client.post("/v1/fill-mask", json={"text": "<mask> " * 600}), 422, "text")


def test_unknown_languages(client: TestClient) -> None:
    _error(client.post("/translate", json={"q": "a", "source": "xx", "target": "fr"}), 400, "xx is not supported")
    _error(client.post("/translate", json={"q": "a", "source": "en", "target": "zz"}), 400, "zz is not supported")
    _error(
        client.post("/translate_file", data={"source": "en", "target": "de"}, files={"file": ("a.txt", b"a")}),
        400,
        "de",
    )


def test_beam_size_zero_and_a_million(client: TestClient) -> None:
    for beam in (0, 1_000_000):
        _error(client.post("/v1/translate", json={"texts": ["a"], "target": "fr", "beam_size": beam}), 422, "beam_size")


def test_a_50_mb_file_is_a_413_naming_the_limit(client: TestClient) -> None:
    big = b"A man is playing a guitar.\n" * (50 * 1024 * 1024 // 27)
    r = client.post("/translate_file", data={"source": "en", "target": "fr"}, files={"file": ("big.txt", big)})
    assert (
        r.status_code == 413
        and "file size limit" in r.json()["error"]
        and "MTSERVE_MAX_FILE_BYTES" in r.json()["error"]
    )


def test_a_file_over_the_character_limit_is_a_400_naming_it() -> None:
    with TestClient(create_app(Settings(file_char_limit=100))) as small:
        files = {"file": ("long.txt", b"A man is playing a guitar. " * 10)}
        _error(small.post("/translate_file", data=EN_FR, files=files), 400, "exceeds text limit (100)",
               "MTSERVE_FILE_CHAR_LIMIT")  # fmt: skip


def test_an_html_file_nested_so_deep_its_texts_would_fill_memory_is_a_400(client: TestClient) -> None:
    """Each element's own text is translated too, so nested text counts once per level: these
    900 KB would give 10¹⁰ characters. They are counted as they are made and stop at the limit."""
    deep = ("<p>" + "<b>w " * 100_000 + "</b>" * 100_000 + "</p>").encode()
    started = time.perf_counter()
    r = client.post("/translate_file", data=EN_FR, files={"file": ("deep.html", deep)})
    _error(r, 400, "exceeds text limit (200000)", "MTSERVE_FILE_CHAR_LIMIT")
    assert time.perf_counter() - started < 10.0


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out.getvalue()


def test_a_zip_bomb_disguised_as_a_word_document_is_refused(client: TestClient) -> None:
    bomb = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": bytes(64 << 20)})
    assert len(bomb) < 200_000
    _error(client.post("/translate_file", data=EN_FR, files={"file": ("cv.docx", bomb)}), 400, "ZIP bomb")


def test_an_epub_with_a_path_traversal_entry_is_refused(client: TestClient) -> None:
    book = _zip({"mimetype": b"application/epub+zip", "../../etc/cron.d/evil.xhtml": b"<p>A dog.</p>"})
    _error(client.post("/translate_file", data=EN_FR, files={"file": ("book.epub", book)}), 400, "unsafe path")
    container = (b'<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
                 b'<rootfile full-path="../../content.opf"/></rootfiles></container>')  # fmt: skip
    book = _zip({"mimetype": b"application/epub+zip", "META-INF/container.xml": container})
    _error(client.post("/translate_file", data=EN_FR, files={"file": ("book.epub", book)}), 400, "outside the package")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("photo.docx", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not a ZIP package"),
        ("secret.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512), "encrypted"),
        ("slides.pptx", _zip({"mimetype": b"application/vnd.oasis.opendocument.text"}), "not a valid PowerPoint"),
        ("letter.odt", _zip({"mimetype": b"application/epub+zip"}), "its mimetype is 'application/epub+zip'"),
        ("book.epub", _zip({"word/document.xml": b"<w/>"}), "must start with the mimetype"),
        ("deck.odp", _zip({"a.xml": b"x"}, zipfile.ZIP_STORED)[:-30], "not a ZIP package"),
    ],
)
def test_a_corrupt_encrypted_or_mislabelled_office_file_is_a_400(
    client: TestClient, name: str, content: bytes, problem: str
) -> None:
    _error(client.post("/translate_file", data=EN_FR, files={"file": (name, content)}), 400, problem)


def test_a_password_protected_opendocument_is_refused(client: TestClient) -> None:
    manifest = (
        b"<manifest:manifest><manifest:file-entry><manifest:encryption-data/></manifest:file-entry></manifest:manifest>"
    )
    odt = _zip({"mimetype": b"application/vnd.oasis.opendocument.text", "META-INF/manifest.xml": manifest})
    _error(client.post("/translate_file", data=EN_FR, files={"file": ("secret.odt", odt)}), 400, "encrypted")


@pytest.mark.parametrize("name", ["photo.txt", "photo.srt", "photo.html"])
def test_a_file_whose_extension_lies_is_a_400_naming_the_problem(client: TestClient, name: str) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    r = client.post("/translate_file", data={"source": "en", "target": "fr"}, files={"file": (name, png)})
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]
