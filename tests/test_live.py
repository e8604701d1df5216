"""A real uvicorn on loopback: a real LibreTranslate client, concurrency, the page in a real browser."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from libretranslatepy import LibreTranslateAPI

from service.api.launcher import LiveServer, live_server, metric_value

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(log_dir=tmp_path_factory.mktemp("live")) as live:
        yield live


def test_the_libretranslate_python_client_works_unchanged(server: LiveServer) -> None:
    client = LibreTranslateAPI(server.url)
    assert "guitare" in client.translate("A man is playing a guitar.", "en", "fr")
    assert "guitar" in client.translate("Un homme joue de la guitare.", "fr", "en")
    assert {lang["code"] for lang in client.languages()} == {"en", "fr"}
    assert client.detect("Bonjour tout le monde")[0]["language"] == "fr"


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_mastodons_request_shape(http: httpx.Client) -> None:
    """Mastodon's TranslationService::LibreTranslate: JSON, a q list of HTML, source auto, format html,
    api_key; it reads translatedText[i] and detectedLanguage[i].language."""
    texts = ["<p>A man is playing a guitar.</p>", "<p>Un chien court sur la plage.</p>"]
    body = {"q": texts, "source": "auto", "target": "fr", "format": "html", "api_key": ""}
    out = http.post("/translate", json=body).json()
    assert out["translatedText"][0].startswith("<p>") and "guitare" in out["translatedText"][0]
    assert [d["language"] for d in out["detectedLanguage"]] == ["en", "fr"]
    assert out["translatedText"][1] == texts[1]  # already French: unchanged
    languages = {lang["code"]: lang["targets"] for lang in http.get("/languages").json()}
    assert languages == {"en": ["en", "fr"], "fr": ["en", "fr"]}


def test_weblates_request_shape_keeps_its_placeholders(http: httpx.Client) -> None:
    """Weblate sends a JSON q list of up to 20 strings whose format strings and markup it has
    replaced with [X1X]-style placeholders; each must come back unchanged."""
    texts = [f"Delete [X{i}X] files from [X{i + 1}X] now." for i in range(0, 40, 2)]
    out = http.post("/translate", json={"q": texts, "source": "en", "target": "fr", "format": "text"}).json()
    assert len(out["translatedText"]) == 20
    for i, translated in zip(range(0, 40, 2), out["translatedText"], strict=True):
        assert f"[X{i}X]" in translated and f"[X{i + 1}X]" in translated


def test_dialects_instance_check_and_requests(server: LiveServer) -> None:
    """Dialect (the GNOME client) replayed from its LibreTranslate provider: GET /spec and require
    info.title "LibreTranslate"; GET /frontend/settings for apiKeys, keyRequired and charLimit;
    GET /languages for the codes; then form posts to /detect and /translate, reading
    [0]["language"], [0]["confidence"] and translatedText, and an "error" key on failure."""
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/spec").json()["info"]["title"] == "LibreTranslate"
        settings = http.get("/frontend/settings").json()
        assert settings.get("apiKeys", False) is False and settings.get("keyRequired", False) is False
        assert settings["charLimit"] > 0
        codes = [lang["code"] for lang in http.get("/languages").json()]
        assert codes == ["en", "fr"]
        detected = http.post("/detect", data={"q": "Un homme joue de la guitare."}).json()
        assert detected[0]["language"] == "fr" and 0 < detected[0]["confidence"] <= 100
        out = http.post("/translate", data={"q": "A man is playing a guitar.", "source": "en", "target": "fr"}).json()
        assert "error" not in out and "guitare" in out["translatedText"]
        auto = http.post("/translate", data={"q": "😀", "source": "auto", "target": "fr"}).json()
        assert auto == {"translatedText": "😀", "detectedLanguage": {"confidence": 0.0, "language": "en"}}
        bad = http.post("/translate", data={"q": "a", "source": "en", "target": "xx"})
        assert bad.status_code == 400 and "xx is not supported" in bad.json()["error"]


def test_deep_translator_with_every_field_in_the_query_string(server: LiveServer) -> None:
    from deep_translator import LibreTranslator

    # deep-translator insists on a key; an instance without keys accepts any
    translator = LibreTranslator(source="en", target="fr", api_key="unused", custom_url=server.url + "/")
    assert "guitare" in translator.translate("A man is playing a guitar.")
    assert [("chien" in t) for t in translator.translate_batch(["A dog.", "Two dogs run."])] == [True, True]


def test_libretranslate_aio_form_posts_repeated_q_and_files(server: LiveServer, tmp_path: Path) -> None:
    from libretranslate_aio import LibreTranslate

    with LibreTranslate(server.url) as client:
        assert "guitare" in str(client.translate("A man is playing a guitar.", "en", "fr").translated_text)
        batch = client.translate(["A dog.", "A cat."], "en", "fr").translated_text  # q repeated in the form
        assert isinstance(batch, list) and len(batch) == 2 and "chien" in batch[0]
        assert client.detect("Un homme joue de la guitare.")[0].language == "fr"
        assert {lang.code for lang in client.languages()} == {"en", "fr"}
        assert ".txt" in client.frontend_settings().supported_files_format
        document = tmp_path / "note.txt"
        document.write_text("A man is playing a guitar.\n")
        url = client.translate_file(document, "en", "fr").translated_file_url
        assert "guitare" in httpx.get(url).text


NPM_TRANSLATE = "translate@3.1.0"


def test_the_npm_translate_package_with_its_libre_engine(server: LiveServer, tmp_path: Path) -> None:
    """npm's `translate`, engine "libre", whose `url` is the full /translate address, on the machine's Node.js."""
    import subprocess

    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("no Node.js on this machine")
    install = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(tmp_path), NPM_TRANSLATE]
    subprocess.run(install, check=True, timeout=300)
    script = tmp_path / "run.mjs"
    script.write_text(
        'import { Translate } from "translate";\n'
        f'const translate = Translate({{ engine: "libre", url: "{server.url}/translate" }});\n'
        'console.log(await translate("A man is playing a guitar.", { from: "en", to: "fr" }));\n'
        'console.log(await translate("Un homme joue de la guitare.", { from: "fr", to: "en" }));\n'
    )
    done = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    french, english = done.stdout.splitlines()
    assert "guitare" in french and "guitar" in english


def _batch_count(metrics: str) -> tuple[float, float]:
    """(batches, sentences) so far, from the batch-size histogram."""
    count = metric_value(metrics, "mtserve_batch_sentences_count")
    total = metric_value(metrics, "mtserve_batch_sentences_sum")
    return count, total


def test_concurrent_requests_share_batches_and_match_sequential(server: LiveServer, shared_data: Path) -> None:
    from model.corpus import read_lines

    sentences = read_lines(shared_data / "multi30k" / "test_2016_flickr.en.gz")[:32]

    async def run() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def one(text: str) -> str:
                r = await client.post("/translate", json={"q": text, "source": "en", "target": "fr"})
                assert r.status_code == 200, r.text
                return str(r.json()["translatedText"])

            sequential = [await one(s) for s in sentences]
            concurrent = await asyncio.gather(*(one(s) for s in sentences))
            return sequential, list(concurrent)

    before = _batch_count(httpx.get(server.url + "/metrics").text)
    sequential, concurrent = asyncio.run(run())
    after = _batch_count(httpx.get(server.url + "/metrics").text)
    assert concurrent == sequential
    batches, sentences_run = after[0] - before[0], after[1] - before[1]
    assert sentences_run == 64
    assert batches < 64 - 16, f"{batches} batches for 64 sentences: concurrent requests were not merged"


def _chromedriver() -> str | None:
    return shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


def test_the_page_translates_in_a_headless_browser(server: LiveServer) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver_path = _chromedriver()
    if driver_path is None:
        pytest.fail("chromedriver not found: `make test` installs the chromium and chromium-driver packages")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(server.url + "/")
        # the language lists come from the model (/languages), not from the page
        WebDriverWait(browser, 10).until(
            expected_conditions.text_to_be_present_in_element((By.ID, "target-lang"), "French")
        )
        sources = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#source-lang option")]
        assert sources == ["auto", "en", "fr"]
        box = browser.find_element(By.ID, "source-text")
        box.clear()
        box.send_keys("A man is playing a guitar.")
        browser.find_element(By.ID, "translate-btn").click()
        WebDriverWait(browser, 30).until(
            expected_conditions.text_to_be_present_in_element((By.ID, "translation"), "guitare")
        )
        assert "homme" in browser.find_element(By.ID, "translation").text
        document = ARTIFACTS / "page-upload.txt"
        ARTIFACTS.mkdir(exist_ok=True)
        document.write_text("Two dogs run on the beach.\n")
        browser.find_element(By.ID, "file-input").send_keys(str(document))
        browser.find_element(By.ID, "file-btn").click()
        link = WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.ID, "file-download"))
        )
        assert "chien" in httpx.get(str(link.get_attribute("href"))).text
        browser.save_screenshot(str(ARTIFACTS / "page.png"))
    finally:
        browser.quit()
