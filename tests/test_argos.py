"""Argos Translate packages and CTranslate2 directories imported, with CTranslate2 itself as the
reference: the committed model packaged as argos-train packages models, tiny OPUS-MT models
converted by CTranslate2's own converter and packaged as Locomotive does, files of an older
format written from its description, and broken packages."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from bench.argos_package import package_mtserve_model, write_package, zip_package
from export.argos import default_packages_dir, import_packages
from export.ct2_model import read_ct2_dir
from export.ctranslate2 import import_ctranslate2
from model.corpus import read_lines
from service.api.launcher import live_server
from service.manifest import DEFAULT_MODEL_DIR, load_manifest
from service.runtime.beam import DecodeOptions
from service.runtime.translator import Translator
from tests.conftest import SHARED_DATA
from tests.ct2_writer import write_model_bin

ctranslate2 = pytest.importorskip("ctranslate2")
spm = pytest.importorskip("sentencepiece")
pytestmark = pytest.mark.slow

TEST2016 = SHARED_DATA / "multi30k" / "test_2016_flickr"


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("argos")


@pytest.fixture(scope="module")
def en_fr(work: Path) -> Path:
    """The committed model as argos-train would package its en→fr direction (int8)."""
    return package_mtserve_model(DEFAULT_MODEL_DIR, work / "en_fr", "en", "fr")


@pytest.fixture(scope="module")
def fr_en(work: Path) -> Path:
    return package_mtserve_model(DEFAULT_MODEL_DIR, work / "fr_en", "fr", "en")


@pytest.fixture(scope="module")
def imported(en_fr: Path, work: Path) -> Path:
    (outcome,) = import_packages([en_fr], work / "models")
    assert outcome.problem is None, outcome.line()
    assert outcome.out is not None
    return outcome.out


def _tag(package: Path) -> str:
    return str(json.loads((package / "metadata.json").read_text())["target_prefix"])


def _ct2(package: Path, sources: list[str], compute_type: str, beam: int) -> list[str]:
    """argostranslate's call: SentencePiece pieces, the package's target prefix, beam, length penalty 0.2,
    unknown tokens replaced."""
    sp = spm.SentencePieceProcessor(model_file=str(package / "sentencepiece.model"))
    translator = ctranslate2.Translator(str(package / "model"), compute_type=compute_type, intra_threads=2)
    prefix = json.loads((package / "metadata.json").read_text()).get("target_prefix")
    results = translator.translate_batch(
        [sp.encode(s, out_type=str) for s in sources], target_prefix=[[prefix]] * len(sources) if prefix else None,
        beam_size=beam, length_penalty=0.2, max_batch_size=32, replace_unknowns=True,
    )  # fmt: skip
    return [sp.decode(r.hypotheses[0]) for r in results]


def _ours(model_dir: Path, sources: list[str], target: str, beam: int | None = None) -> list[str]:
    translator = Translator.load(model_dir, 2)
    options = DecodeOptions.from_generation(translator.model.manifest.generation, beam_size=beam)
    return [t[0].text for t in translator.translate(sources, target, options)]


# ---- the reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["int8", "int16", "float16", "bfloat16"])
def test_every_storage_type_reads_back_as_the_weights(work: Path, quantization: str) -> None:
    from bench.ct2_convert import convert

    reference = read_ct2_dir(convert(DEFAULT_MODEL_DIR, work / "ct2-float32", None, source_eos=True))
    stored = read_ct2_dir(convert(DEFAULT_MODEL_DIR, work / f"ct2-{quantization}", quantization, source_eos=True))
    assert stored.variables["decoder/layer_0/ffn/linear_0/weight"].dtype == quantization
    assert stored.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    for name, var in reference.variables.items():
        if var.array.ndim == 0 or name.endswith("_scale"):
            continue
        want, got = reference.weight(name), stored.weight(name)
        step = {"int8": 1 / 127, "int16": 1 / 1024, "float16": 1e-3, "bfloat16": 8e-3}[quantization]
        assert np.abs(got - want).max() <= step * max(1.0, float(np.abs(want).max())), name


def _old_variables(model_dir: Path, revision: int) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, str]]:
    """A float32 model's variables as an older TransformerSpec revision named them: scalars at the
    top level; in revision 3 `encoder/embeddings` without an index and the scale flag under each
    embedding, in revision 4 `encoder/scale_embeddings` and `decoder/scale_embeddings`."""
    model = read_ct2_dir(model_dir)

    def old_name(name: str) -> str:
        return name.replace("encoder/embeddings_0/", "encoder/embeddings/") if revision == 3 else name

    variables: dict[str, tuple[str, np.ndarray]] = {}
    for name, var in model.variables.items():
        if var.array.ndim == 0 or name in model.aliases or name.endswith("_scale"):
            continue
        variables[old_name(name)] = ("float32", model.weight(name))
    flags = {"num_heads": 4, "pre_norm": 1, "with_source_eos": 1, "with_target_bos": 0}
    scale = "{side}/embeddings/multiply_by_sqrt_depth" if revision == 3 else "{side}/scale_embeddings"
    flags |= {scale.format(side=side): 1 for side in ("encoder", "decoder")}
    for name, value in flags.items():
        variables[name] = ("int8", np.asarray(value, dtype=np.int8))
    aliases = {old_name(alias): old_name(target) for alias, target in model.aliases.items()}
    return variables, aliases


@pytest.mark.parametrize(("version", "revision"), [(3, 3), (4, 3), (5, 4)])
def test_an_old_binary_version_and_spec_revision_translates_as_the_new_one(
    work: Path, en_fr: Path, version: int, revision: int
) -> None:
    from bench.ct2_convert import convert

    modern = convert(DEFAULT_MODEL_DIR, work / "ct2-float32", None, source_eos=True)
    old = work / f"ct2-v{version}"
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    variables, aliases = _old_variables(modern, revision)
    write_model_bin(old / "model.bin", variables, version=version, revision=revision, aliases=aliases)
    pieces = json.loads((modern / "shared_vocabulary.json").read_text())
    (old / "shared_vocabulary.txt").write_text("".join(p + "\n" for p in pieces))
    spm_file = en_fr / "sentencepiece.model"
    out_old = import_ctranslate2(old, work / f"old-v{version}", "en", "fr", spm_file, target_prefix=_tag(en_fr))
    assert out_old["binary_version"] == version and out_old["spec_revision"] == revision
    import_ctranslate2(modern, work / "new", "en", "fr", spm_file, target_prefix=_tag(en_fr))
    sources = _lines(TEST2016.with_suffix(".en.gz"))[:30]
    assert _ours(work / f"old-v{version}", sources, "fr") == _ours(work / "new", sources, "fr")


# ---- parity with CTranslate2 ----------------------------------------------------------------------


def test_an_fp32_import_translates_exactly_as_ctranslate2_float32(en_fr: Path, imported: Path) -> None:
    manifest = load_manifest(imported)
    assert manifest.origin == "argos" and manifest.precision == "fp32"
    assert (manifest.generation.beam_size, manifest.generation.length_penalty) == (4, 0.2)
    sources = _lines(TEST2016.with_suffix(".en.gz"))[:200]
    assert _ours(imported, sources, "fr", beam=1) == _ct2(en_fr, sources, "float32", 1)
    ours, theirs = _ours(imported, sources, "fr"), _ct2(en_fr, sources, "float32", 4)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert same >= 0.98 * len(sources), f"beam 4: {same} of {len(sources)} identical"


def test_packages_import_without_torch_into_the_same_files(en_fr: Path, imported: Path, tmp_path: Path) -> None:
    """The service's image holds no torch: `mtserve import argos` runs there, writes the same model
    files as with torch, and says its graphs were checked by the runtime, not against PyTorch."""
    blocked = "import sys; sys.modules['torch'] = None; from service.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", blocked, "import", "argos", str(en_fr), "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no torch" in done.stderr
    (out,) = [p for p in tmp_path.iterdir() if (p / "manifest.json").is_file()]
    assert load_manifest(out).sha256 == load_manifest(imported).sha256
    report = json.loads((out / "export_report.json").read_text())
    assert report["reference"] is None and report["fp32"]["greedy"]["empty"] == 0
    assert json.loads((imported / "export_report.json").read_text())["reference"] == "pytorch"


def test_an_int8_import_scores_as_ctranslate2_int8(en_fr: Path, work: Path) -> None:
    import sacrebleu

    (outcome,) = import_packages([en_fr], work / "int8", precision="int8")
    assert outcome.out is not None and load_manifest(outcome.out).precision == "int8"
    sources, references = _lines(TEST2016.with_suffix(".en.gz")), _lines(TEST2016.with_suffix(".fr.gz"))
    ours = sacrebleu.corpus_bleu(_ours(outcome.out, sources, "fr"), [references]).score
    theirs = sacrebleu.corpus_bleu(_ct2(en_fr, sources, "int8", 4), [references]).score
    print(f"test2016 en→fr beam 4: mtserve int8 {ours:.2f}, CTranslate2 int8 {theirs:.2f}")
    assert abs(ours - theirs) <= 0.3


def test_an_int8_import_calibrated_on_given_text_translates_as_the_per_row_one(en_fr: Path, work: Path) -> None:
    """`--calibrate en=FILE`: the activations get constant scales, and the weights their rounding,
    from the user's sentences (here training text; a test set never), and the translations stay,
    all but a few, the per-row import's."""
    training = _lines(SHARED_DATA / "multi30k" / "train.en.gz")[:200]
    (per_row,) = import_packages([en_fr], work / "int8-rows", precision="int8")
    (outcome,) = import_packages([en_fr], work / "int8-calibrated", "int8", {"en": training})
    assert per_row.out is not None and outcome.out is not None, outcome.line()
    report = json.loads((outcome.out / "export_report.json").read_text())
    assert report["int8_activations"] == "constant scales from calibration"
    assert report["int8_weights"] == "rounding compensated on calibration"
    assert report["calibration_sentences"] == {"en": len(training)}
    nodes = onnx.load(str(outcome.out / "decoder_step.onnx"), load_external_data=False).graph.node
    assert not [node for node in nodes if node.name.startswith("int8.row_range")]
    sources = _lines(TEST2016.with_suffix(".en.gz"))[:100]
    calibrated, rows = _ours(outcome.out, sources, "fr"), _ours(per_row.out, sources, "fr")
    same = sum(a == b for a, b in zip(calibrated, rows, strict=True)) / len(sources)
    print(f"calibrated import: {same:.0%} of 100 test2016 translations as the per-row import's")
    assert same >= 0.75


def test_calibration_text_must_be_given_in_each_packages_source_language(en_fr: Path, work: Path) -> None:
    (missing,) = import_packages([en_fr], work / "calibrated-fr", "int8", {"fr": ["Un chat dort sur le lit."]})
    assert missing.out is None and missing.problem == "calibration text in en: none given: add --calibrate en=FILE"
    (empty,) = import_packages([en_fr], work / "calibrated-digits", "int8", {"en": ["1 2 3", "..."]})
    assert empty.out is None
    assert empty.problem == "calibration text in en: no sentence with letters to calibrate on"
    assert not list((work / "calibrated-fr").iterdir()) and not list((work / "calibrated-digits").iterdir())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--calibrate", "en=sample.txt"], "--calibrate scales int8 activations: add --quantize int8"),
        (["--quantize", "int8", "--calibrate", "sample.txt"], "--calibrate 'sample.txt': expected LANG=FILE"),
        (["--quantize", "int8", "--calibrate", "en=absent.txt"], "--calibrate en=absent.txt: cannot read it"),
    ],
)
def test_the_import_command_refuses_calibration_it_cannot_use(
    en_fr: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    command = [sys.executable, "-m", "service.cli", "import", "argos", str(en_fr), "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"mtserve import: {message}" in done.stderr
    assert not (tmp_path / "out").exists()


def test_packages_import_with_a_shortlist_from_the_text_of_their_own_directions(
    en_fr: Path, fr_en: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--shortlist 1024`: en→fr from parallel training text, fr→en from its own translations of French
    training sentences; text in a direction no package has is named and left unused."""
    from service.cli import main

    train = SHARED_DATA / "multi30k"
    french = work / "shortlist-sources.fr"
    french.write_text("\n".join(_lines(train / "train.fr.gz")[:300]) + "\n")
    out = work / "shortlisted"
    pairs = f"en-fr={train / 'train.en.gz'},{train / 'train.fr.gz'}"
    command = ["import", "argos", str(en_fr), str(fr_en), "--out", str(out), "--quantize", "int8"]
    assert main([*command, "--shortlist", "1024", "--shortlist-pairs", pairs, f"de-fr={french},{french}",
                 "--shortlist-sources", f"fr={french}"]) == 0  # fmt: skip
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert [line.split()[0] for line in lines[::2]] == ["en→fr", "fr→en"]
    assert lines[1].startswith("  shortlist of 1024 tokens a sentence, from 29,000 pairs into fr;")
    assert lines[3].startswith("  shortlist of 1024 tokens a sentence, from ") and "pairs into en" in lines[3]
    assert "--shortlist-pairs de-fr: no model imported translates de to fr; not used" in printed.err
    (plain,) = import_packages([en_fr], work / "int8-plain", precision="int8")
    assert plain.out is not None
    sources = _lines(TEST2016.with_suffix(".en.gz"))[:100]
    shortlisted = out / "translate-en_fr"
    assert load_manifest(shortlisted).files["output_layer"] == "output_layer.npz"
    same = sum(a == b for a, b in zip(_ours(shortlisted, sources, "fr"), _ours(plain.out, sources, "fr"), strict=True))
    print(f"shortlisted import: {same} of 100 test2016 translations as the plain import's")
    assert same >= 70
    assert "output_layer" in load_manifest(out / "translate-fr_en").files


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shortlist", "1024"], "--shortlist needs text: --shortlist-pairs"),
        (["--shortlist-sources", "en=sample.txt"], "are text for --shortlist SIZE: add it"),
        (["--shortlist", "8", "--shortlist-sources", "en=sample.txt"], "--shortlist 8: at least 16 tokens"),
        (["--shortlist", "1024", "--shortlist-pairs", "en-fr=a.en"], "expected SRC-TGT=SOURCE_FILE,TARGET_FILE"),
        (["--shortlist", "1024", "--shortlist-sources", "en=absent.txt"], "en=absent.txt: cannot read it"),
    ],
)
def test_the_import_command_refuses_a_shortlist_it_cannot_make_before_importing(
    en_fr: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    from service.cli import main

    with pytest.raises(SystemExit, match=message):
        main(["import", "argos", str(en_fr), "--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module", params=["swish-shared-tied", "gelu-separate-untied"])
def opus_mt(request: pytest.FixtureRequest, tiny_data_dir: Path, work: Path) -> tuple[Path, Path]:
    """A tiny OPUS-MT model converted by CTranslate2's own converter, packaged as Locomotive's
    opus_mt_convert.py does (the source SentencePiece model only, EOS after the source); the
    package and its import."""
    from bench.marian_models import Variant, build_marian_dir

    variant = Variant() if request.param.startswith("swish") else Variant(
        activation="gelu", shared_embeddings=False, tied_output=False, seed=1
    )  # fmt: skip
    en = read_lines(tiny_data_dir / "multi30k/train.en.gz")
    fr = read_lines(tiny_data_dir / "multi30k/train.fr.gz")
    root = work / f"opus-{request.param}"
    hf = build_marian_dir(root / "hf", en, fr, variant)
    ct2 = root / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2), quantization="int8", force=True)
    config = json.loads((ct2 / "config.json").read_text())
    (ct2 / "config.json").write_text(json.dumps({**config, "add_source_eos": True}))
    package = write_package(root / "translate-en_fr-1_9", ct2, hf / "source.spm", "en", "fr", "1.9")
    (outcome,) = import_packages([package], root / "models")
    assert outcome.out is not None, outcome.line()
    return package, outcome.out


def _assert_agrees(ours: Translator, sources: list[str], theirs: list[str], beam: int, share: float) -> None:
    """Our translations into fr, 40 tokens at most as CTranslate2 was given, equal CTranslate2's: all of
    them at greedy, at least `share` at a wider beam."""
    options = replace(DecodeOptions.from_generation(ours.model.manifest.generation, beam_size=beam),
                      max_length=40, proportional_limit=False)  # fmt: skip
    got = [t[0].text for t in ours.translate(sources, "fr", options)]
    same = sum(a == b for a, b in zip(got, theirs, strict=True))
    assert same == len(sources) if beam == 1 else same >= share * len(sources), (
        f"beam {beam}: {same} identical; first: {got[0]!r} against {theirs[0]!r}"
    )


def test_an_opus_mt_package_translates_as_ctranslate2(opus_mt: tuple[Path, Path], tiny_data_dir: Path) -> None:
    """Post-norm, swish or GELU, a zero embedding as the first input, EOS after the source. The
    random models loop until a length limit, so both engines get the same one: 40 tokens."""
    package, out = opus_mt
    sp = spm.SentencePieceProcessor(model_file=str(package / "sentencepiece.model"))
    reference = ctranslate2.Translator(str(package / "model"), compute_type="float32")
    ours = Translator.load(out, 2)
    sources = read_lines(tiny_data_dir / "multi30k/train.en.gz")[-60:]
    pieces = [sp.encode(s, out_type=str) for s in sources]
    for beam in (1, 4):
        results = reference.translate_batch(pieces, beam_size=beam, length_penalty=0.2, max_decoding_length=40,
                                            replace_unknowns=True, max_batch_size=1)  # fmt: skip
        theirs = [sp.decode_pieces(r.hypotheses[0]).replace("▁", " ").strip() for r in results]
        _assert_agrees(ours, sources, theirs, beam, 0.95)


def test_a_target_prefix_after_the_start_token_is_forced_as_ctranslate2_forces_it(
    opus_mt: tuple[Path, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """A package whose target_prefix follows the model's decoder_start_token (as multilingual packages
    name their target language): the import forces it after the start token, unscored, and leaves it
    out of the output, as argostranslate strips it from CTranslate2's."""
    package, _ = opus_mt
    vocabulary = read_ct2_dir(package / "model").target_vocabulary
    forced = next(p for p in ("▁Un", "▁Une", "▁Le") if p in vocabulary)
    prefixed = shutil.copytree(package, tmp_path / package.name)
    metadata = json.loads((prefixed / "metadata.json").read_text())
    (prefixed / "metadata.json").write_text(json.dumps({**metadata, "target_prefix": forced}))
    (outcome,) = import_packages([prefixed], tmp_path / "models")
    assert outcome.out is not None, outcome.line()
    assert load_manifest(outcome.out).decoder_prefix == {"fr": [vocabulary.index(forced)]}
    sp = spm.SentencePieceProcessor(model_file=str(package / "sentencepiece.model"))
    reference = ctranslate2.Translator(str(package / "model"), compute_type="float32")
    ours = Translator.load(outcome.out, 2)
    sources = read_lines(tiny_data_dir / "multi30k/train.en.gz")[-60:]
    pieces = [sp.encode(s, out_type=str) for s in sources]
    for beam in (1, 4):
        results = reference.translate_batch(pieces, target_prefix=[[forced]] * len(pieces), beam_size=beam,
                                            length_penalty=0.2, max_decoding_length=40)  # fmt: skip
        assert all(r.hypotheses[0][0] == forced for r in results)
        theirs = [sp.decode_pieces(r.hypotheses[0][1:]).replace("▁", " ").strip() for r in results]
        _assert_agrees(ours, sources, theirs, beam, 0.98)


def _with_unknowns(package: Path, out: Path, bias: float) -> Path:
    """The package with <unk>'s output bias raised by `bias`, so that the model emits it often."""
    copy = shutil.copytree(package, out)
    model = read_ct2_dir(copy / "model")
    unk = model.target_vocabulary.index("<unk>")
    variables = {name: (var.dtype, var.array) for name, var in model.variables.items() if name not in model.aliases}
    dtype, projection_bias = variables["decoder/projection/bias"]
    raised = projection_bias.copy()
    raised[unk] += bias
    variables["decoder/projection/bias"] = (dtype, raised)
    write_model_bin(copy / "model" / "model.bin", variables, version=model.binary_version,
                    revision=model.spec_revision, aliases=model.aliases)  # fmt: skip
    return copy


def test_unknown_tokens_are_replaced_from_the_source_as_ctranslate2_replaces_them(
    opus_mt: tuple[Path, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """argostranslate asks CTranslate2 for replace_unknowns: an output <unk> becomes the source piece
    that the last layer's first head attended to most at that step. The model's <unk> is made
    likely, and the sources carry characters the vocabulary lacks; both engines must give the same
    text, and a piece the vocabulary lacks comes back as the source wrote it."""
    package, _ = opus_mt
    unknowing = _with_unknowns(package, tmp_path / package.name, 4.0)
    (outcome,) = import_packages([unknowing], tmp_path / "models")
    assert outcome.out is not None, outcome.line()
    assert load_manifest(outcome.out).generation.replace_unknowns
    sp = spm.SentencePieceProcessor(model_file=str(unknowing / "sentencepiece.model"))
    reference = ctranslate2.Translator(str(unknowing / "model"), compute_type="float32")
    ours = Translator.load(outcome.out, 2)
    strange = ["猫", "Ωμέγα", "Dvořák"]
    sentences = read_lines(tiny_data_dir / "multi30k/train.en.gz")[-60:]
    sources = [f"{s} {strange[i % len(strange)]} !" for i, s in enumerate(sentences)]
    pieces = [sp.encode(s, out_type=str) for s in sources]
    for beam in (1, 4):
        plain = reference.translate_batch(pieces, beam_size=beam, length_penalty=0.2, max_decoding_length=40)
        unknowns = sum(r.hypotheses[0].count("<unk>") for r in plain)
        assert unknowns >= 200, f"beam {beam}: CTranslate2 emits only {unknowns} unknown tokens; nothing to replace"
        # One sentence per batch: CTranslate2's batched beam search gives a sentence the first step's
        # attention of another sentence of its batch (docs/DESIGN.md); alone, it is the sentence's own.
        results = reference.translate_batch(pieces, beam_size=beam, length_penalty=0.2, max_decoding_length=40,
                                            replace_unknowns=True, max_batch_size=1)  # fmt: skip
        theirs = [sp.decode_pieces(r.hypotheses[0]).replace("▁", " ").strip() for r in results]
        _assert_agrees(ours, sources, theirs, beam, 0.95)
    ids, surface = ours.tokenizer.encode_pieces("猫")
    unk = load_manifest(outcome.out).special_ids.unk
    assert unk in ids
    assert ours.tokenizer.decode([unk], {0: surface[ids.index(unk)]}) == "猫"
    assert ours.tokenizer.decode([unk]) == ""  # without a replacement it is left out, as before


# ---- broken packages -----------------------------------------------------------------------------


def _rewrite(model_dir: Path, edit: str) -> None:
    from tests.ct2_writer import model_bin

    model = read_ct2_dir(model_dir)
    derived = {a + s for a in model.aliases for s in ("_scale", "_zero")}
    variables = {
        n: (v.dtype, v.array) for n, v in model.variables.items() if n not in model.aliases and n not in derived
    }
    dtype_ids = {}
    if edit == "dtype":
        dtype_ids = {"decoder/layer_0/ffn/linear_0/bias": 9}
    elif edit == "relative":
        variables["encoder/layer_0/self_attention/relative_position_keys"] = ("float32", np.zeros((41, 64), np.float32))
    (model_dir / "model.bin").write_bytes(model_bin(variables, aliases=model.aliases, dtype_ids=dtype_ids))


def _break(package: Path, how: str) -> None:
    model = package / "model"
    if how == "no metadata":
        (package / "metadata.json").unlink()
    elif how == "truncated":
        data = (model / "model.bin").read_bytes()
        (model / "model.bin").write_bytes(data[: len(data) // 2])
    elif how in ("dtype", "relative"):
        _rewrite(model, how)
    elif how == "vocabulary":
        pieces = json.loads((model / "shared_vocabulary.json").read_text())
        (model / "shared_vocabulary.json").write_text(json.dumps(pieces[:-10]))
    elif how == "bpe":
        (package / "sentencepiece.model").rename(package / "bpe.model")


@pytest.mark.parametrize(
    ("how", "piece"),
    [
        ("no metadata", "metadata.json: missing"),
        ("truncated", "model/model.bin: truncated"),
        ("dtype", "model/model.bin variable decoder/layer_0/ffn/linear_0/bias: unknown dtype id 9"),
        ("relative", "relative_position_keys: relative positions"),
        ("vocabulary", "rows for a vocabulary of"),
        ("bpe", "bpe.model: a BPE package"),
    ],
)
def test_a_broken_package_is_skipped_naming_the_package_and_the_piece(
    en_fr: Path, tmp_path: Path, how: str, piece: str
) -> None:
    broken = tmp_path / "translate-en_fr-broken"
    shutil.copytree(en_fr, broken)
    _break(broken, how)
    (outcome,) = import_packages([broken], tmp_path / "out")
    assert outcome.problem is not None and piece in outcome.problem, outcome.problem
    assert outcome.line().startswith(f"skipped {broken.name}: ")
    assert not any((tmp_path / "out").iterdir()), "a partial model directory stayed behind"


def _zip(entries: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in entries.items():
            handle.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("entries", "piece"),
    [
        ({"a/metadata.json": b"{}", "b/metadata.json": b"{}"}, "2 top-level folders"),
        ({"a/metadata.json": b"{}", "a/../../escape.txt": b"x"}, "leaves the package folder"),
    ],
)
def test_a_bad_archive_is_refused(tmp_path: Path, entries: dict[str, bytes], piece: str) -> None:
    archive = _zip(entries, tmp_path / "bad.argosmodel")
    (outcome,) = import_packages([archive], tmp_path / "out")
    assert outcome.problem is not None and piece in outcome.problem and "bad.argosmodel" in outcome.line()
    assert not (tmp_path / "escape.txt").exists()


# ---- the commands --------------------------------------------------------------------------------


def test_the_packages_directory_is_found_as_argostranslate_finds_it(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert default_packages_dir(home) == tmp_path / ".local/share/argos-translate/packages"
    assert default_packages_dir({**home, "XDG_DATA_HOME": "/data"}) == Path("/data/argos-translate/packages")
    settings = tmp_path / ".config/argos-translate/settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"ARGOS_PACKAGES_DIR": "/srv/packages"}))
    assert default_packages_dir(home) == Path("/srv/packages")
    assert default_packages_dir({**home, "ARGOS_PACKAGES_DIR": "/env/packages"}) == Path("/env/packages")


@pytest.fixture(scope="module")
def served(en_fr: Path, fr_en: Path, work: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """`mtserve import argos` with no path, on LibreTranslate's packages directory: an archive, an
    installed folder and a broken package."""
    packages = work / "lt-packages"
    packages.mkdir()
    zip_package(en_fr, packages / "translate-en_fr-1_0.argosmodel")
    shutil.copytree(fr_en, packages / "fr_en")
    shutil.copytree(fr_en, packages / "broken")
    (packages / "broken" / "metadata.json").unlink()
    out = work / "served-models"
    env = {**os.environ, "ARGOS_PACKAGES_DIR": str(packages)}
    done = subprocess.run([sys.executable, "-m", "service.cli", "import", "argos", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    yield out, done


def test_the_import_command_prints_a_line_per_package(served: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, done = served
    assert done.returncode == 1, done.stderr  # one skipped
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and "Traceback" not in done.stderr
    assert any(line.startswith("en→fr") and " MB " in line for line in lines)
    assert any(line.startswith("fr→en") for line in lines)
    assert any(line.startswith("skipped broken: metadata.json: missing") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["translate-en_fr", "translate-fr_en"]


def test_a_live_server_answers_libretranslate_in_every_imported_direction(
    served: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    import httpx

    out, _ = served
    env = {"MTSERVE_MODELS": str(out), "MTSERVE_LOG_LEVEL": "warning"}  # the import's output directory, as it is
    with live_server(env=env, log_dir=tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        languages = {entry["code"]: entry["targets"] for entry in http.get("/languages").json()}
        assert languages == {"en": ["en", "fr"], "fr": ["en", "fr"]}
        for source, target, text, word in (("en", "fr", "A dog runs in the snow.", "chien"),
                                           ("fr", "en", "Un chien court dans la neige.", "dog")):  # fmt: skip
            r = http.post("/translate", json={"q": text, "source": source, "target": target})
            assert r.status_code == 200 and word in r.json()["translatedText"].lower(), r.text
            files = {"file": ("note.txt", text.encode())}
            r = http.post("/translate_file", data={"source": source, "target": target}, files=files)
            assert r.status_code == 200, r.text
            url = r.json()["translatedFileUrl"].replace("http://testserver", server.url)
            assert word in http.get(url).text.lower()


def test_the_ctranslate2_command_imports_a_bare_directory(en_fr: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    command = [sys.executable, "-m", "service.cli", "import", "ctranslate2", str(en_fr / "model"), "--out", str(out),
               "--source", "en", "--target", "fr", "--spm", str(en_fr / "sentencepiece.model"),
               "--target-prefix", _tag(en_fr)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert load_manifest(out).origin == "ctranslate2"
    assert "chien" in _ours(out, ["A dog runs in the snow."], "fr")[0]
    done = subprocess.run([*command[:7], str(tmp_path / "x"), *command[8:-2]], capture_output=True, text=True)
    assert done.returncode != 0 and "decoder_start_token" in done.stderr and "Traceback" not in done.stderr


def test_argos_codes_are_shown_as_libretranslate_shows_them(en_fr: Path, tmp_path: Path) -> None:
    """A package whose target is Argos's `zt` (Chinese, traditional) is `zh-Hant` in /languages, and
    either code reaches it."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.api.settings import Settings

    package = write_package(tmp_path / "translate-en_zt", en_fr / "model", en_fr / "sentencepiece.model", "en", "zt",
                            target_prefix=_tag(en_fr))  # fmt: skip
    (outcome,) = import_packages([package], tmp_path / "models")
    assert outcome.out is not None and outcome.direction == "en→zt"
    with TestClient(create_app(Settings(models=[outcome.out]))) as client:
        languages = {entry["code"]: entry for entry in client.get("/languages").json()}
        assert languages["zh-Hant"]["name"] == "Chinese (traditional)"
        assert languages["en"]["targets"] == ["en", "zh-Hant"]
        for code in ("zh-Hant", "zt"):
            r = client.post("/translate", json={"q": "A dog runs.", "source": "en", "target": code})
            assert r.status_code == 200 and r.json()["translatedText"], r.text
