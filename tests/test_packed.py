"""One copy of the weights: graphs' packed copies made once, shared by every session, checked for damage;
a mid-size fp32 model's memory once loaded and after a large batch."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import onnx
import pytest

from service.manifest import DEFAULT_MODEL_DIR, sha256_file
from service.runtime import native, packed
from service.runtime.beam import DecodeOptions
from service.runtime.packed import FILES_FILE
from service.runtime.translator import Translator

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["A man is riding a bicycle down the street.", "Two dogs play in the snow.", "A girl reads a book."]
BEAM_AND_GREEDY = (DecodeOptions(beam_size=5), DecodeOptions(beam_size=1))
# The memory issue's bounds: an fp32 model once loaded holds at most this many times its files,
# and a batch of 128 sentences leaves at most this much behind once done.
FP32_LOADED_FACTOR = 1.15
AFTER_BATCH_MB = 100


def _outputs(translator: Translator) -> list[str]:
    return [t[0].text for options in BEAM_AND_GREEDY for t in translator.translate(SENTENCES, "fr", options)]


@pytest.fixture(scope="module")
def unpacked_outputs() -> list[str]:
    return _outputs(Translator.load(DEFAULT_MODEL_DIR, 2, packed=False))


def _copies(root: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in root.glob("*/*") if p.is_file()}


def test_packed_copies_are_made_once_and_translate_as_the_graphs(tmp_path: Path, unpacked_outputs: list[str]) -> None:
    first = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    made = _copies(tmp_path)
    assert {"encoder.onnx", "decoder_step.onnx", "mlm_head.onnx"} <= set(made), made
    assert _outputs(first) == unpacked_outputs
    second = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    assert _copies(tmp_path) == made, "a second load made its copies again"
    assert _outputs(second) == unpacked_outputs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging directory was left behind"


def _copy_dirs(root: Path) -> set[Path]:
    return {p for p in root.iterdir() if p.is_dir()}


def test_a_cpu_whose_cpuid_answers_for_another_kernel_gets_copies_of_its_own(
    tmp_path: Path, unpacked_outputs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emulator presenting an older CPU leaves /proc/cpuinfo naming the host's flags: the copies'
    key also holds the kernel this process's CPUID answers for, so copies packed for the host are not
    read there."""
    module = native.common_step
    assert module is not None, native.NOT_BUILT
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    host_copies = _copy_dirs(tmp_path)
    _index, name = module.projection_kernel()
    kernels = module.projection_kernels()
    if len(kernels) < 2:
        pytest.skip("this CPU runs the plain kernel alone")
    narrower = kernels[-2]  # one that runs here (not always the widest's index - 1)
    monkeypatch.setattr(module, "projection_kernel", lambda: (narrower, f"not {name}"))
    packed.cpu_signature.cache_clear()
    try:
        translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
        emulated_copies = _copy_dirs(tmp_path) - host_copies
    finally:
        monkeypatch.undo()
        packed.cpu_signature.cache_clear()
    assert len(emulated_copies) == len(host_copies), "the other CPU's load read the host's copies"
    assert _outputs(translator) == unpacked_outputs
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    assert _copy_dirs(tmp_path) == host_copies | emulated_copies, "the host made its copies again"


def _data_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/decoder_step.onnx.data"))


def _first_packed_blob(graph: Path) -> int:
    """Where the first packed matrix starts in the graph's data file (its initializers' records)."""
    model = onnx.load(str(graph), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key.startswith("prepacked"):
                return int(entry.value.split("|")[1].split(";")[0])
    raise AssertionError(f"{graph} holds no packed matrix")


def test_a_truncated_copy_is_made_again(tmp_path: Path, unpacked_outputs: list[str]) -> None:
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    (data,) = _data_files(tmp_path)
    size = data.stat().st_size
    with data.open("r+b") as handle:
        handle.truncate(size // 2)
    translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    assert data.stat().st_size == size
    assert _outputs(translator) == unpacked_outputs


def test_a_damaged_copy_falls_back_to_the_graphs_and_is_made_again(
    tmp_path: Path, unpacked_outputs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    (data,) = _data_files(tmp_path)
    raw = bytearray(data.read_bytes())
    raw[-4096:] = bytes(4096)  # weights onnxruntime reads as they are, its size unchanged
    data.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="mtserve.runtime"):
        translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    assert any("decoder_step.onnx" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert _outputs(translator) == unpacked_outputs
    assert _data_files(tmp_path)[0].read_bytes() != bytes(raw), "the damaged copy was kept"


def test_a_packed_matrix_that_onnxruntime_refuses_opens_the_graphs_and_is_made_again(
    tmp_path: Path, unpacked_outputs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A copy that passes its recorded hashes but holds packed matrices the kernels would not make
    (as one written by other kernels would): onnxruntime refuses it, the graph opens as exported."""
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    (data,) = _data_files(tmp_path)
    blob = _first_packed_blob(data.with_suffix(""))
    raw = bytearray(data.read_bytes())
    raw[blob : blob + 64] = bytes(64)
    data.write_bytes(bytes(raw))
    recorded = json.loads((data.parent / FILES_FILE).read_text())
    recorded["files"][data.name] = [len(raw), sha256_file(data)]
    (data.parent / FILES_FILE).write_text(json.dumps(recorded))
    with caplog.at_level(logging.WARNING, logger="mtserve.runtime"):
        translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    assert _outputs(translator) == unpacked_outputs
    assert any("onnxruntime" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert not _data_files(tmp_path), "the refused copy was kept"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_an_unwritable_directory_keeps_the_graphs(
    tmp_path: Path, unpacked_outputs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="mtserve.runtime"):
            translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path / "packed")
    finally:
        tmp_path.chmod(0o700)
    assert _outputs(translator) == unpacked_outputs
    assert any(str(tmp_path) in r.getMessage() for r in caplog.records)


LOAD_AT_ONCE = """
import logging, sys
from pathlib import Path
from service.manifest import DEFAULT_MODEL_DIR
from service.runtime.translator import Translator
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
Translator.load(DEFAULT_MODEL_DIR, 1, packed=Path(sys.argv[1]))
"""


def test_processes_loading_one_model_at_once_make_each_copy_once(tmp_path: Path) -> None:
    """What a server of several processes does at start: every process loads the model at once."""
    loads = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AT_ONCE, str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    logs = [load.communicate(timeout=120)[1] for load in loads]
    assert [load.returncode for load in loads] == [0, 0, 0], logs
    made = "".join(logs).count("for this CPU in")
    assert made == 3, f"{made} copies made for the model's 3 graphs:\n" + "\n".join(logs)
    assert "WARNING" not in "".join(logs), logs


MEASURE = """
import gzip, json, sys, time
from pathlib import Path
from service.runtime.beam import DecodeOptions
from service.runtime.sessions import IDLE_RELEASE_S
from service.runtime.translator import Translator

def pss():
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024

model, packed, data = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
texts = [line.strip() for line in gzip.open(data, "rt", encoding="utf-8")][:128]
Translator.load(Path(sys.argv[4]), 2, packed=packed)  # the libraries' own pages, counted before
before = pss()
translator = Translator.load(model, 2, packed=packed)
loaded = pss() - before
options = DecodeOptions(beam_size=5, max_length=24, proportional_limit=False, repetition_guard=False)
translator.translate(texts, "xx", options)
time.sleep(2 * IDLE_RELEASE_S)  # the batch's memory goes back once the model idles
print(json.dumps({"loaded_mb": loaded, "after_mb": pss() - before}))
"""


@pytest.fixture(scope="module")
def mid_size_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model between the default and the Argos shape: d_model 512, 3+3 layers,
    16,000 pieces, fp32, imported from CTranslate2 as Argos packages are."""
    pytest.importorskip("ctranslate2")
    from bench.argos_engines import TAG, write_ct2
    from export.ctranslate2 import import_ctranslate2

    work = tmp_path_factory.mktemp("mid-size")
    ct2 = write_ct2(work / "ct2", None, vocab_size=16_000, encoder_layers=3, decoder_layers=3)
    out = work / "fp32"
    import_ctranslate2(ct2, out, "en", "xx", DEFAULT_MODEL_DIR / "spm.model", target_prefix=TAG, precision="fp32")
    return out


def test_a_mid_size_fp32_model_holds_one_copy_of_its_weights(
    mid_size_fp32: Path, tmp_path: Path, shared_data: Path
) -> None:
    files = sum(p.stat().st_size for p in mid_size_fp32.iterdir() if p.suffix in (".onnx", ".bin")) / 2**20
    Translator.load(mid_size_fp32, 2, packed=tmp_path)  # the packed copies, made once on this machine
    data = shared_data / "multi30k" / "test_2016_flickr.en.gz"
    command = [sys.executable, "-c", MEASURE, str(mid_size_fp32), str(tmp_path), str(data), str(DEFAULT_MODEL_DIR)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    loaded, after = measured["loaded_mb"], measured["after_mb"]
    print(f"mid-size fp32: {files:.0f} MB of files, PSS {loaded:.0f} MB loaded, {after:.0f} MB after 128 sentences")
    assert loaded <= FP32_LOADED_FACTOR * files, (
        f"PSS once loaded {loaded:.0f} MB, over {FP32_LOADED_FACTOR} x its {files:.0f} MB of files"
    )
    assert after - loaded <= AFTER_BATCH_MB, f"PSS {loaded:.0f} MB once loaded, {after:.0f} MB after 128 sentences"


def test_a_model_let_go_after_a_large_batch_is_freed_at_once(tmp_path: Path) -> None:
    """Its memory goes with it (a budget unloads models), not at the next garbage collection."""
    translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    translator.translate(SENTENCES * 4, "fr", DecodeOptions(beam_size=5))  # a large batch: a release pending
    model = weakref.ref(translator.model)
    gc.disable()
    try:
        del translator
        assert model() is None
    finally:
        gc.enable()


def test_copies_of_a_model_changed_in_place_are_replaced_not_kept(tmp_path: Path) -> None:
    model, packed = tmp_path / "model", tmp_path / "packed"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    Translator.load(model, 2, packed=packed)
    first = sorted(p.name for p in packed.iterdir() if p.is_dir())
    weights = model / "weights.bin"  # the model exported again: other weights, the same path
    raw = bytearray(weights.read_bytes())
    raw[0] ^= 1
    weights.write_bytes(bytes(raw))
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sha256"]["weights.bin"] = sha256_file(weights)
    (model / "manifest.json").write_text(json.dumps(manifest))
    Translator.load(model, 2, packed=packed)
    second = sorted(p.name for p in packed.iterdir() if p.is_dir())
    assert len(second) == len(first) == 3, (first, second)  # encoder, decoder step, MLM head
    assert not set(first) & set(second)


def test_copies_made_under_the_key_of_before_the_cpuid_kernel_are_replaced_not_kept(tmp_path: Path) -> None:
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    current = _copy_dirs(tmp_path)
    for directory in current:  # as the version before wrote them: the CPU without its CPUID's kernel
        files = json.loads((directory / FILES_FILE).read_text())
        files["made_for"]["cpu"] = files["made_for"]["cpu"].partition(packed.CPUID_KERNEL)[0]
        (directory / FILES_FILE).write_text(json.dumps(files))
        directory.rename(directory.with_name(directory.name[::-1]))
    earlier = _copy_dirs(tmp_path)
    Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    assert _copy_dirs(tmp_path) == current, "the earlier key's copies were kept beside the new ones"
    assert not earlier & _copy_dirs(tmp_path)
