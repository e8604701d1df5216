"""Imported Marian models against transformers: logits, greedy and beam search, and bad directories."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from bench.marian_models import Variant, build_marian_dir
from export.marian import MarianImportError, import_marian
from model.corpus import read_lines
from service.api.app import create_app
from service.api.settings import Settings
from service.conventions import max_target_length
from service.runtime.beam import DecodeOptions, beam_search, runaway
from service.runtime.sessions import OnnxModel
from service.runtime.translator import Translator

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "swish-shared-tied": Variant(),
    "gelu-separate-untied": Variant(activation="gelu", shared_embeddings=False, tied_output=False, seed=1),
    "relu-unscaled": Variant(activation="relu", scale_embedding=False, length_penalty=0.6, seed=2),
    "multi-target": Variant(language_tokens=("fra", "deu"), seed=3),
}
SENTENCES = 50


@pytest.fixture(scope="module")
def corpus(tiny_data_dir: Path) -> tuple[list[str], list[str]]:
    en = read_lines(tiny_data_dir / "multi30k/train.en.gz")
    fr = read_lines(tiny_data_dir / "multi30k/train.fr.gz")
    return en, fr


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imported(
    request: pytest.FixtureRequest, corpus: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Variant, Path, Path]:
    variant = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(f"marian-{request.param}")
    hf_dir = build_marian_dir(root / "opus-mt-en-fr", *corpus, variant)
    out = root / "model"
    targets = ["fr", "de"] if variant.language_tokens else []
    import_marian(hf_dir, out, targets=targets)
    return variant, hf_dir, out


def _hf(hf_dir: Path) -> tuple[object, object]:
    model = transformers.MarianMTModel.from_pretrained(str(hf_dir)).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(hf_dir))
    return model, tokenizer


def _sources(tokenizer: object, texts: Sequence[str], prefix: str) -> list[list[int]]:
    return [list(tokenizer(prefix + t)["input_ids"]) for t in texts]  # type: ignore[operator]


def _generate(model: object, sources: list[list[int]], pad: int, **kwargs: object) -> list[list[int]]:
    width = max(len(s) for s in sources)
    ids = torch.full((len(sources), width), pad)
    mask = torch.zeros((len(sources), width), dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)  # type: ignore[attr-defined]
    # drop the decoder start, then everything from the first EOS (or padding) on
    rows = []
    for row in out[:, 1:].tolist():
        end = next((i for i, t in enumerate(row) if t in (0, pad)), len(row))
        rows.append(row[:end])
    return rows


def _both(imported: tuple[Variant, Path, Path], texts: Sequence[str]) -> tuple[object, OnnxModel, list[list[int]]]:
    """transformers' model, the imported one, and `texts` as transformers' tokenizer encodes them."""
    variant, hf_dir, out = imported
    model, tokenizer = _hf(hf_dir)
    prefix = ">>fra<< " if variant.language_tokens else ""
    return model, OnnxModel(out), _sources(tokenizer, texts, prefix)


def test_imported_logits_match_transformers_forward(
    imported: tuple[Variant, Path, Path], corpus: tuple[list[str], list[str]]
) -> None:
    model, onnx, sources = _both(imported, corpus[0][:8])
    worst = 0.0
    pad = onnx.pad_id
    for ids in sources:
        src = np.asarray([ids], np.int64)
        enc = onnx.encode(src, np.ones_like(src))
        target = [pad, *list(ids)[1:6]]  # any target prefix: teacher-forced
        with torch.no_grad():
            theirs = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([target])).logits[0]  # type: ignore[operator]
        reference = theirs.log_softmax(-1).numpy()
        cache = onnx.new_cache(1, len(target))
        for step, token in enumerate(target):
            log_probs = onnx.decode_step(np.asarray([[token]], np.int64), np.ones_like(src), cache, enc.cross)
            finite = np.isfinite(log_probs[0])
            assert not finite[pad], "the pad token must never be generated"
            worst = max(worst, float(np.abs(log_probs[0][finite] - reference[step][finite]).max()))
    assert worst < 1e-4


def test_imported_greedy_and_beam_match_generate(
    imported: tuple[Variant, Path, Path], corpus: tuple[list[str], list[str]]
) -> None:
    variant = imported[0]
    model, onnx, sources = _both(imported, corpus[0][-SENTENCES:])
    start = onnx.languages.tag_ids["fr"]
    limit = variant.max_length - 1  # transformers' max_length counts the decoder start token
    rules = {
        "proportional_limit": False,
        "max_length": limit,
        "forced_eos": True,
        "repetition_guard": False,
        "cut_degenerate": False,
    }
    greedy = DecodeOptions(beam_size=1, **rules)  # type: ignore[arg-type]
    ours = [h[0].tokens for h in beam_search(onnx, sources, [start] * len(sources), greedy)]
    theirs = _generate(model, sources, onnx.pad_id, num_beams=1, max_length=variant.max_length)
    assert ours == theirs
    beam = DecodeOptions(beam_size=5, length_penalty=variant.length_penalty, early_stopping=False, **rules)  # type: ignore[arg-type]
    ours = [h[0].tokens for h in beam_search(onnx, sources, [start] * len(sources), beam)]
    theirs = _generate(
        model,
        sources,
        onnx.pad_id,
        num_beams=5,
        max_length=variant.max_length,
        length_penalty=variant.length_penalty,
        early_stopping=False,
    )
    assert ours == theirs


def test_imported_translator_decodes_text_as_transformers(
    imported: tuple[Variant, Path, Path], corpus: tuple[list[str], list[str]]
) -> None:
    variant, hf_dir, out = imported
    model, tokenizer = _hf(hf_dir)
    translator = Translator.load(out)
    texts = corpus[0][:20]
    generation = translator.model.manifest.generation
    assert (generation.beam_size, generation.max_length) == (variant.num_beams, variant.max_length - 1)
    options = DecodeOptions(
        beam_size=1,
        proportional_limit=False,
        max_length=generation.max_length,
        forced_eos=True,
        repetition_guard=False,
        cut_degenerate=False,
    )
    ours = [t[0].text for t in translator.translate(texts, "fr", options)]
    prefix = ">>fra<< " if variant.language_tokens else ""
    ids = _generate(model, _sources(tokenizer, texts, prefix), translator.model.pad_id, num_beams=1,
                    max_length=variant.max_length)  # fmt: skip
    theirs = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]  # type: ignore[attr-defined]
    assert ours == theirs


@pytest.fixture(scope="module")
def good_dir(corpus: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_marian_dir(tmp_path_factory.mktemp("good") / "opus-mt-en-fr", *corpus, Variant())


def _broken(good: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "opus-mt-en-fr"
    shutil.copytree(good, bad)
    return bad


def _edit_config(path: Path, **values: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(values)
    (path / "config.json").write_text(json.dumps(config))


def _keep_special_pieces_only(path: Path) -> None:
    vocab = json.loads((path / "vocab.json").read_text())
    (path / "vocab.json").write_text(json.dumps({p: i for p, i in vocab.items() if p.startswith("<")}))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "target.spm").unlink(), "target.spm: missing"),
        (lambda d: (d / "model.safetensors").unlink(), "no weights"),
        (lambda d: _edit_config(d, activation_function="mish"), "activation_function='mish' is not handled"),
        (lambda d: _edit_config(d, normalize_before=True), "normalize_before=True is not handled"),
        (lambda d: _edit_config(d, decoder_ffn_dim=128), "decoder_ffn_dim"),
        (lambda d: _edit_config(d, pad_token_id=3), "pad_token_id=3"),
        (_keep_special_pieces_only, "vocab.json: does not match source.spm"),
    ],
)
def test_bad_marian_directory_names_what_is_wrong(
    good_dir: Path, tmp_path: Path, breakage: object, message: str
) -> None:
    bad = _broken(good_dir, tmp_path)
    breakage(bad)  # type: ignore[operator]
    with pytest.raises(MarianImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_marian(bad, tmp_path / "out")


def test_the_import_command_writes_a_served_model_and_names_a_bad_directory(good_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "model"
    command = [sys.executable, "-m", "service.cli", "import", "marian", str(good_dir), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["fp32"]["greedy"]["identical"] == report["fp32"]["greedy"]["sentences"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["origin"] == "marian" and manifest["directions"] == [["en", "fr"]]
    assert "mlm_head" not in manifest["files"]
    bad = _broken(good_dir, tmp_path / "bad")
    (bad / "vocab.json").unlink()
    done = subprocess.run([*command[:5], str(bad), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode != 0 and "vocab.json: missing" in done.stderr


def test_an_int8_import_calibrates_on_text_in_its_source_language(
    good_dir: Path, corpus: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    from export.calibrate import CalibrationError

    english, _ = corpus
    report = import_marian(good_dir, tmp_path / "calibrated", "int8", calibration_text={"en": english[:50]})
    assert report["int8_activations"] == "constant scales from calibration"
    assert report["int8_weights"] == "rounding compensated on calibration"
    assert report["calibration_sentences"] == {"en": 50}
    assert report["int8"]["greedy"]["sentences"] > 0
    with pytest.raises(CalibrationError, match="calibration text in 'de': the model translates from en"):
        import_marian(good_dir, tmp_path / "wrong", "int8", calibration_text={"de": ["Ein Hund läuft."]})


def _mtserve_translate(model_dir: Path, texts: Sequence[str], *flags: str) -> list[str]:
    command = [sys.executable, "-m", "service.cli", "translate", "--model", str(model_dir), "--source", "en"]
    done = subprocess.run([*command, "--target", "fr", *flags], input="\n".join(texts) + "\n",
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _loops(tokens: Sequence[int]) -> bool:
    """Whether the guard would have stopped this output somewhere."""
    return any(runaway(tokens[:i], tokens[i]) for i in range(len(tokens)))


def test_an_import_served_with_its_defaults_translates_as_generate(
    imported: tuple[Variant, Path, Path], corpus: tuple[list[str], list[str]]
) -> None:
    """Default settings: no repetition guard, no cut, so the import gives transformers' own
    translations, except where the proportional limit (2·source + 10 tokens) cuts them first."""
    variant, hf_dir, out = imported
    model, tokenizer = _hf(hf_dir)
    texts = corpus[0][-SENTENCES:]
    sources = _sources(tokenizer, texts, ">>fra<< " if variant.language_tokens else "")
    within: list[bool] = []
    for flags, kwargs in (((), {}), (("--beam-size", "1"), {"num_beams": 1})):
        theirs = _generate(model, sources, tokenizer.pad_token_id, **kwargs)  # type: ignore[attr-defined]
        ours = _mtserve_translate(out, texts, *flags)
        within = [len(t) + 1 <= max_target_length(len(s)) for t, s in zip(theirs, sources, strict=True)]
        expected = [tokenizer.decode(t, skip_special_tokens=True) for t in theirs]  # type: ignore[attr-defined]
        differ = [i for i in range(len(texts)) if within[i] and ours[i] != expected[i]]
        assert not differ, f"{flags or 'beam'}: {len(differ)} differ, first {ours[differ[0]]!r} {expected[differ[0]]!r}"
        print(f"{flags or 'beam'}: {within.count(False)} of {len(texts)} cut by the proportional limit")
    assert within.count(True) >= SENTENCES * 0.8


def test_the_guard_by_setting_or_request_changes_a_looping_sentence(
    imported: tuple[Variant, Path, Path], corpus: tuple[list[str], list[str]]
) -> None:
    variant, hf_dir, out = imported
    model, tokenizer = _hf(hf_dir)
    texts = corpus[0][:SENTENCES]
    sources = _sources(tokenizer, texts, ">>fra<< " if variant.language_tokens else "")
    greedy = _generate(model, sources, tokenizer.pad_token_id, num_beams=1)  # type: ignore[attr-defined]
    looping = [texts[i] for i, tokens in enumerate(greedy) if _loops(tokens)]
    assert looping, "no sentence of the fixture loops"
    body = {"texts": looping[:4], "source": "en", "target": "fr", "beam_size": 1}
    with TestClient(create_app(Settings(models=[out]))) as client:
        response = client.post("/v1/translate", json=body)
        assert response.status_code == 200, response.text
        plain = [t["text"] for t in response.json()["translations"]]
        asked = client.post("/v1/translate", json={**body, "repetition_guard": True}).json()["translations"]
    with TestClient(create_app(Settings(models=[out], repetition_guard="on"))) as client:
        guarded = [t["text"] for t in client.post("/v1/translate", json=body).json()["translations"]]
        overruled = client.post("/v1/translate", json={**body, "repetition_guard": False}).json()["translations"]
    assert plain == [tokenizer.decode(greedy[texts.index(t)], skip_special_tokens=True) for t in looping[:4]]  # type: ignore[attr-defined]
    assert [t["text"] for t in asked] == guarded and all(g != p for g, p in zip(guarded, plain, strict=True))
    assert [t["text"] for t in overruled] == plain


def test_the_guard_keeps_every_beam_out_of_a_loop(
    imported: tuple[Variant, Path, Path], corpus: tuple[list[str], list[str]]
) -> None:
    """At beam 5, all five hypotheses of sentences whose hypotheses loop without the guard: with
    it, a token that would close a loop never extends a beam, nor ends one cut at the length limit,
    and every sentence keeps its five."""
    _, _, out = imported
    translator = Translator.load(out, 1)
    texts = corpus[0][:20]
    sources = [translator.prepare(t).pieces[0] for t in texts]

    guarded = DecodeOptions(beam_size=5, n_best=5, cut_degenerate=False)
    hypotheses = {}
    for guard in (False, True):
        options = dataclasses.replace(guarded, repetition_guard=guard)
        hypotheses[guard] = [h for hs in translator.search(sources, ["fr"] * len(texts), options) for h in hs]
    assert sum(_loops(h.tokens) for h in hypotheses[False]) >= len(texts), "the fixture should loop"
    assert len(hypotheses[True]) == 5 * len(texts)
    assert not [h.tokens for h in hypotheses[True] if _loops(h.tokens)]
    # A sentence alone (its checks over few candidates) is guarded as in the batch (over many).
    alone = [h for source in sources[:4] for h in translator.search([source], ["fr"], guarded)[0]]
    assert alone == hypotheses[True][: len(alone)]


def test_a_shortlisted_import_decodes_within_its_shortlist_and_as_before_with_it_off(
    imported: tuple[Variant, Path, Path],
    corpus: tuple[list[str], list[str]],
    tiny_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.cli import main

    variant, hf_dir, out = imported
    model_dir = tmp_path / "model"
    shutil.copytree(out, model_dir)
    en, fr = tiny_data_dir / "multi30k/train.en.gz", tiny_data_dir / "multi30k/train.fr.gz"
    size = json.loads((out / "manifest.json").read_text())["vocab_size"] // 3
    assert main(["shortlist", str(model_dir), "--size", str(size), "--pairs", f"en-fr={en},{fr}"]) == 0
    plain, shortlisted = OnnxModel(out), OnnxModel(model_dir)
    # its never-generated tokens are barred after the step's log-softmax, which stays in the graph
    assert shortlisted.host_top_k and shortlisted.logits_eos is None
    prefix = ">>fra<< " if variant.language_tokens else ""
    sources = _sources(_hf(hf_dir)[1], corpus[0][-12:], prefix)
    tags = [plain.languages.tag_ids["fr"]] * len(sources)
    options = DecodeOptions(beam_size=4, n_best=4)
    vocab = shortlisted.output_vocab(sources, tags)
    assert vocab is not None
    for i, hyps in enumerate(beam_search(shortlisted, sources, tags, options)):
        allowed = set(vocab.vocab[np.isfinite(vocab.sentence_bias[i])].tolist())
        assert all(set(h.tokens) <= allowed - {plain.pad_id} for h in hyps)
    monkeypatch.setenv("MTSERVE_SHORTLIST", "off")
    whole = OnnxModel(model_dir)
    expected, got = beam_search(plain, sources, tags, options), beam_search(whole, sources, tags, options)
    assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in expected]
    src = np.asarray([sources[0]], np.int64)
    steps = []
    for model in (plain, whole):
        cache = model.new_cache(1, 2)
        steps.append(
            model.decode_step(
                np.asarray([[tags[0]]]), np.ones_like(src), cache, model.encode(src, np.ones_like(src)).cross
            )
        )
    assert np.array_equal(np.isfinite(steps[0]), np.isfinite(steps[1]))
    assert np.allclose(steps[0][np.isfinite(steps[0])], steps[1][np.isfinite(steps[1])], atol=1e-5)
