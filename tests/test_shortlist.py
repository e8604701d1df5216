"""The output shortlist (`mtserve shortlist`): each sentence decodes over its own candidates, the
same alone and in any batch, and with MTSERVE_SHORTLIST=off exactly as the model without one."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.cli import main
from service.conventions import EOS_ID
from service.graphs import DECODER_TOP_K
from service.manifest import MANIFEST_FILE, ModelFileError, sha256_file
from service.runtime import native
from service.runtime.beam import DecodeOptions, Hypothesis, beam_search
from service.runtime.beside import HELPER_THREAD_NAME, Beside
from service.runtime.projection import FLOAT_HOST_SENTENCES, HOST_SENTENCES, PROJECTION_OUTPUTS, PROJECTION_ROWS
from service.runtime.sessions import OnnxModel
from service.runtime.shortlist import OUTPUT_BIAS, OUTPUT_VOCAB, BatchVocab
from service.runtime.top_k import STEP_LOGITS, normalised_logits, top_k
from tests.conftest import TAG

pytestmark = pytest.mark.slow

SIZE = 150  # of the tiny model's 400 tokens


def _pairs(data_dir: Path) -> list[str]:
    en, fr = data_dir / "multi30k/train.en.gz", data_dir / "multi30k/train.fr.gz"
    return ["--pairs", f"en-fr={en},{fr}", f"fr-en={fr},{en}"]


def _shortlisted(model: Path, data_dir: Path, out: Path, size: int = SIZE) -> Path:
    shutil.copytree(model, out)
    assert main(["shortlist", str(out), "--size", str(size), *_pairs(data_dir)]) == 0
    return out


@pytest.fixture(scope="module", params=["fp32", "int8"])
def models(
    request: pytest.FixtureRequest, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(the exported tiny model, a copy of it with a shortlist), at each precision."""
    plain: Path = request.getfixturevalue("exported" if request.param == "fp32" else "exported_int8")
    return plain, _shortlisted(plain, tiny_data_dir, tmp_path_factory.mktemp("shortlisted") / "model")


def _search(
    model: OnnxModel, texts: list[str], beam: int = 5
) -> tuple[list[list[int]], list[int], list[list[Hypothesis]]]:
    sources = [[*model.tokenizer.encode(text), EOS_ID] for text in texts]
    tags = [TAG["fr"] if i % 3 else TAG["en"] for i in range(len(sources))]
    return sources, tags, beam_search(model, sources, tags, DecodeOptions(beam_size=beam, n_best=beam))


def test_each_sentence_decodes_over_its_own_candidates_alone_and_in_any_batch(
    models: tuple[Path, Path], sentences: list[str]
) -> None:
    plain, shortlisted = OnnxModel(models[0], 2), OnnxModel(models[1], 2)
    assert shortlisted.output_layer is not None
    sources, tags, batched = _search(shortlisted, sentences)
    languages = {TAG["en"]: "en", TAG["fr"]: "fr"}
    for source, tag, hyps in zip(sources, tags, batched, strict=True):
        candidates = shortlisted.output_layer.candidates(source, languages[tag])
        assert candidates is not None
        allowed = set(candidates.tolist())
        assert len(allowed) == SIZE
        assert all(set(h.tokens) <= allowed for h in hyps), "a token outside the sentence's shortlist"
    for i in (0, 4, len(sources) - 1):
        alone = beam_search(shortlisted, [sources[i]], [tags[i]], DecodeOptions(beam_size=5, n_best=5))[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert np.allclose([h.score for h in alone], [h.score for h in batched[i]], atol=1e-5)
    # The tiny model has memorised its training pairs (the first half of `sentences`), which the
    # shortlist was built from: their best translations stay those of the whole vocabulary.
    _, _, full = _search(plain, sentences[:12])
    into_french = [i for i in range(12) if tags[i] == TAG["fr"]]
    assert [batched[i][0].tokens for i in into_french] == [full[i][0].tokens for i in into_french]


def test_batches_take_their_projection_on_the_host_and_decode_as_the_graphs(
    models: tuple[Path, Path], sentences: list[str]
) -> None:
    """A shortlisted step gives its projection's input rows (an int8 step its codes and row scales, an
    fp32 one its rows); for batches of any size with AMX or AVX-512 VNNI, of up to 8 sentences with
    AVX-VNNI and 2 with AVX2 alone (an fp32 step: up to 8 with AVX-512, else never), the runtime
    multiplies them itself (service/runtime/projection.py), and they decode as with the graph's
    projection (MTSERVE_HOST_PROJECTION=off), alone, in batches of each size, and past the bound. A CPU
    without those kernels keeps the graph's."""
    assert native.common_step is not None, native.NOT_BUILT
    host, graph = OnnxModel(models[1], 2), OnnxModel(models[1], 2)
    step_outputs = {o.name for o in host.decoder.wide.get_outputs()}
    floating = host.manifest.precision != "int8"
    assert set(PROJECTION_OUTPUTS) <= step_outputs if not floating else PROJECTION_ROWS in step_outputs
    kernel, _name = native.common_step.projection_kernel()
    bounds = FLOAT_HOST_SENTENCES if floating else HOST_SENTENCES
    if kernel not in bounds:
        assert host.host_projection is None
        return
    assert host.host_projection is not None and host.host_projection.kernel == kernel
    assert host.host_projection.floating == floating
    most = host.host_projection.max_sentences
    assert most == bounds[kernel]
    graph.host_projection = None
    for batch in sorted({1, 2, 3, most or 8, (most or 8) + 4}):  # 12 sentences: rows of several tiles
        texts = sentences[:batch]
        _, _, by_host = _search(host, texts)
        _, _, by_graph = _search(graph, texts)
        for mine, theirs in zip(by_host, by_graph, strict=True):
            assert [h.tokens for h in mine] == [h.tokens for h in theirs], batch
            assert np.allclose([h.score for h in mine], [h.score for h in theirs], atol=1e-5), batch


def test_a_sentences_output_layer_is_made_beside_its_encoder_where_a_cpu_would_idle(
    models: tuple[Path, Path], sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made on the helper thread once started (as the encoder's run begins), with the same values as
    on the caller's; with one CPU, or never started, on the caller's thread."""
    model = OnnxModel(models[1], 1)  # one thread: with two CPUs, one idles while a graph runs
    sources, tags, _ = _search(model, sentences[:3])
    made_on: list[str] = []
    real = model.output_vocab

    def recorded(sources: list[list[int]], tags: list[int]) -> BatchVocab | None:
        made_on.append(threading.current_thread().name)
        return real(sources, tags)

    monkeypatch.setattr(model, "output_vocab", recorded)
    expected = real(sources, tags)
    assert expected is not None
    searches = {}
    for cpus in ({0, 1}, {0}):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: cpus)
        for started in (True, False):
            pending = model.output_vocab_beside(sources, tags)
            time.sleep(0.02)
            assert not made_on, "made before it was started"
            if started:
                pending.start()
            made = pending()
            assert made is not None
            for field in ("vocab", "weight", "scale", "sentence_bias"):
                assert np.array_equal(getattr(made, field), getattr(expected, field)), field
            assert made_on == [HELPER_THREAD_NAME if started and len(cpus) > 1 else threading.current_thread().name]
            made_on.clear()
        # in a search: a sentence alone (its kept arrays from the second search on), then a batch
        alone = [beam_search(model, sources[:1], tags[:1], DecodeOptions(beam_size=5, n_best=5)) for _ in range(2)]
        batch = beam_search(model, sources, tags, DecodeOptions(beam_size=5))
        assert alone[0] == alone[1]
        assert set(made_on) == {HELPER_THREAD_NAME if len(cpus) > 1 else threading.current_thread().name}
        made_on.clear()
        searches[len(cpus)] = (alone[0], batch)
    assert searches[2] == searches[1]
    failing = Beside(lambda: 1 // 0)
    failing.start()
    with pytest.raises(ZeroDivisionError):  # what the helper raised, raised where its result is asked for
        failing()


def test_sentences_alone_take_the_last_search_of_their_shape_and_translate_as_in_a_batch(
    models: tuple[Path, Path], sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sentence alone takes the mask, encoder outputs, cache, output layer and bindings that the last
    search of its shape left (OnnxModel.keep_search), refilled with its own: it binds nothing anew, and
    translates as it does in a batch, whatever came before it, in either direction, on two threads at once."""
    import service.runtime.sessions as sessions

    model = OnnxModel(models[1], 2)
    # The batches on a model of their own: a large batch lets the model's kept searches go once it
    # idles (release_arena), which would bind them again at a moment the test does not choose.
    sources, tags, batched = _search(OnnxModel(models[1], 2), sentences)
    greedy = beam_search(OnnxModel(models[1], 2), sources, tags, DecodeOptions(beam_size=1))
    bindings_made: list[int] = []
    real = sessions.step_feeds

    def counted(*args: object, **kwargs: object) -> sessions.StepFeeds:
        bindings_made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sessions, "step_feeds", counted)

    def each_alone(order: list[int]) -> None:
        for i in order:
            for beam, expected in ((5, batched[i]), (1, greedy[i])):
                alone = beam_search(model, [sources[i]], [tags[i]], DecodeOptions(beam_size=beam, n_best=beam))[0]
                assert [h.tokens for h in alone] == [h.tokens for h in expected], (i, beam)
                assert np.allclose([h.score for h in alone], [h.score for h in expected], atol=1e-5)

    each_alone([*range(len(sources))][::-1])
    assert 0 < len(bindings_made) < len(sources)  # a binding per shape and row count, not per search
    made = len(bindings_made)
    each_alone([3, 3, 0, len(sources) - 1])  # every shape seen: each search finds its bindings kept
    assert len(bindings_made) == made, "a kept search bound its step again"

    def alone(i: int) -> list[int]:
        return beam_search(model, [sources[i]], [tags[i]], DecodeOptions(beam_size=5, n_best=5))[0][0].tokens

    with ThreadPoolExecutor(2) as pool:  # two searches at once never share what is kept
        for _ in range(3):
            got = list(pool.map(alone, range(len(sources))))
            assert got == [hyps[0].tokens for hyps in batched]


def test_with_the_shortlist_off_sentences_alone_keep_no_copy_of_the_output_layer(
    models: tuple[Path, Path], sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the whole vocabulary a sentence alone reads the output layer's own matrix: nothing is
    copied for it, and its kept bindings serve the next sentence as with a shortlist."""
    import service.runtime.sessions as sessions

    monkeypatch.setenv("MTSERVE_SHORTLIST", "off")
    model = OnnxModel(models[1], 2)
    sources, tags, batched = _search(model, sentences[:6])
    calls = {"owned": 0, "step_feeds": 0}
    owned, step_feeds = BatchVocab.owned, sessions.step_feeds

    def counted_owned(vocab: BatchVocab) -> BatchVocab:
        calls["owned"] += 1
        return owned(vocab)

    def counted_feeds(*args: object, **kwargs: object) -> sessions.StepFeeds:
        calls["step_feeds"] += 1
        return step_feeds(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchVocab, "owned", counted_owned)
    monkeypatch.setattr(sessions, "step_feeds", counted_feeds)
    made = []
    for _ in range(2):
        for i, expected in enumerate(batched):
            alone = beam_search(model, [sources[i]], [tags[i]], DecodeOptions(beam_size=5, n_best=5))[0]
            assert [h.tokens for h in alone] == [h.tokens for h in expected]
        made.append(calls["step_feeds"])
    assert calls["owned"] == 0
    assert 0 < made[0] == made[1]  # bound in the first round only


def test_an_owned_output_layer_takes_anothers_values_into_its_own_arrays() -> None:
    """What a kept search's bindings hold (BatchVocab.owned) is written again, row biases per beam
    width included, and only by an output layer of the same shape."""
    rng = np.random.default_rng(0)

    def made(columns: int, scaled: bool = True) -> BatchVocab:
        vocab = np.sort(rng.choice(400, columns, replace=False)).astype(np.int64)
        weight = rng.integers(-63, 64, (8, columns)).astype(np.int8)
        scale = rng.random(columns).astype(np.float32) if scaled else None
        bias = np.where(rng.random((1, columns)) < 0.5, 0.0, -np.inf).astype(np.float32)
        return BatchVocab(vocab, weight, scale, bias)

    kept, original = made(32).owned(), made(32)
    beams = kept.row_bias(4)
    arrays = [kept.vocab, kept.weight, kept.scale, kept.sentence_bias]
    assert kept.refill(original)
    for name in ("vocab", "weight", "scale", "sentence_bias"):
        assert np.array_equal(getattr(kept, name), getattr(original, name)), name
    assert kept.row_bias(4) is beams and np.array_equal(beams, original.row_bias(4))
    assert all(a is b for a, b in zip(arrays, [kept.vocab, kept.weight, kept.scale, kept.sentence_bias], strict=True))
    weight = kept.weight.copy()
    assert not kept.refill(made(48)) and not kept.refill(made(32, scaled=False))
    assert np.array_equal(kept.weight, weight)


def test_with_the_shortlist_off_a_model_decodes_exactly_as_without_one(
    models: tuple[Path, Path], sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTSERVE_SHORTLIST", "off")
    plain, shortlisted = OnnxModel(models[0], 2), OnnxModel(models[1], 2)
    for beam in (1, 4):
        _, _, expected = _search(plain, sentences, beam)
        _, _, got = _search(shortlisted, sentences, beam)
        assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in expected]
        scores = [[h.score for h in hyps] for hyps in got], [[h.score for h in hyps] for hyps in expected]
        assert np.allclose(*scores, atol=1e-5)
    # decode_step's log-probs span the whole vocabulary, shortlist or not
    ids = np.asarray([[*plain.tokenizer.encode(sentences[0]), EOS_ID]])
    steps = []
    for model in (plain, shortlisted):
        mask = np.ones_like(ids)
        cache = model.new_cache(1, 2)
        steps.append(model.decode_step(np.asarray([[TAG["fr"]]]), mask, cache, model.encode(ids, mask).cross))
    assert steps[0].shape == steps[1].shape == (1, plain.manifest.vocab_size)
    assert np.allclose(steps[0], steps[1], atol=1e-5)


def test_the_step_leaves_its_top_k_to_the_runtime_which_ranks_as_one_stable_sort(
    models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewritten step returns its logits over the union and no log-softmax or top-k of its own; the
    runtime's (in C, and in numpy without the module) gives the best DECODER_TOP_K of each row, equal
    scores by the lower position, NaN last, whatever the row's width."""
    step = onnx.load(str(models[1] / "decoder_step.onnx"))
    outputs = [o.name for o in step.graph.output]
    assert STEP_LOGITS in outputs
    assert not {"log_probs", "eos_log_prob", "top_ids", "top_log_probs"} & set(outputs)
    assert not {"TopK", "LogSoftmax"} & {node.op_type for node in step.graph.node}
    rng = np.random.default_rng(0)
    for width in (DECODER_TOP_K, 17, 300, 2_049, 8_000):
        scores = rng.integers(-6, 0, (9, width)).astype(np.float32)  # many equal scores in every row
        scores[3, :] = -1.0  # a row of one score: the first positions
        scores[4, : width // 2] = -np.inf  # half masked, as a union's other sentences are
        scores[5, rng.random(width) < 0.3] = np.nan
        scores[6] = rng.standard_normal(width).astype(np.float32)  # no ties: only the threshold works
        scores[7, ::-1] = np.sort(scores[6])  # best last: each value beats the last
        vocab = np.sort(rng.choice(100_000, width, replace=False)).astype(np.int64)
        ranked = np.stack([np.lexsort((np.arange(width), -np.nan_to_num(row, nan=0.0), np.isnan(row)))
                           for row in scores])  # fmt: skip
        for module, k in ((native.common_step, DECODER_TOP_K), (native.common_step, 10), (native.common_step, 1),
                          (None, DECODER_TOP_K)):  # fmt: skip
            monkeypatch.setattr(native, "common_step", module)
            order = ranked[:, :k]  # as many as a search of k / 2 beams reads, or all DECODER_TOP_K
            values = np.empty((len(scores), k), np.float32)
            ids = np.empty((len(scores), k), np.int64)
            top_k(scores, vocab, values, ids)
            assert np.array_equal(ids, vocab[order]), (width, module, k)
            assert np.array_equal(values, np.take_along_axis(scores, order, axis=1), equal_nan=True)


def test_the_runtime_normalises_a_steps_logits_with_each_sentences_bias_as_a_log_softmax(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step's logits [R, U] take their sentence's bias (row r: sentence r // (R / S)), -inf columns
    left out of the normaliser, and come out as the best log-probs and EOS's, in C and in numpy: as
    the graph's Add, LogSoftmax and Gather gave them, in float64 here."""
    rng = np.random.default_rng(1)
    for sentences, beams, width in ((1, 1, 20), (3, 5, 300), (8, 4, 2_055)):
        rows = sentences * beams
        logits = (rng.standard_normal((rows, width)) * 4).astype(np.float32)
        bias = rng.standard_normal((sentences, width)).astype(np.float32) * 0.1
        bias[rng.random((sentences, width)) < 0.6] = -np.inf  # outside each sentence's shortlist
        bias[:, [0, 2]] = 0.0  # EOS's position, and one more, in every shortlist
        vocab = np.sort(rng.choice(100_000, width, replace=False)).astype(np.int64)
        biased = logits.astype(np.float64) + np.repeat(bias, beams, axis=0)
        top = biased.max(axis=1, keepdims=True)
        expected = biased - top - np.log(np.exp(biased - top).sum(axis=1, keepdims=True))
        order = np.argsort(-expected, axis=1, kind="stable")[:, :DECODER_TOP_K]
        for module in (native.common_step, None):
            monkeypatch.setattr(native, "common_step", module)
            values = np.empty((rows, DECODER_TOP_K), np.float32)
            ids = np.empty((rows, DECODER_TOP_K), np.int64)
            eos = np.empty(rows, np.float32)
            top_k(logits.copy(), vocab, values, ids, (bias, 2, eos))
            assert np.array_equal(ids, vocab[order]), (width, module)
            assert np.allclose(values, np.take_along_axis(expected, order, axis=1), atol=2e-5), (width, module)
            assert np.allclose(eos, expected[:, 2], atol=2e-5), (width, module)
    with pytest.raises(ValueError, match="do not agree"):
        normalised_logits(np.zeros((6, 4), np.float32), np.zeros((4, 4), np.float32), 0, np.zeros(6, np.float32))


def _earlier_step(model_dir: Path, own_top_k: bool) -> None:
    """A shortlisted step as earlier versions wrote it, made from the current one: an `output_bias`
    input added before a LogSoftmax of its own, log_probs and EOS's among its outputs, and with
    `own_top_k`, a TopK over them too (its ids through `output_vocab`)."""
    path = model_dir / "decoder_step.onnx"
    step = onnx.load(str(path), load_external_data=False)
    graph, helper = step.graph, onnx.helper
    graph.output.remove(next(o for o in graph.output if o.name == STEP_LOGITS))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(EOS_ID, np.int64), "earlier.eos"))
    graph.node.extend(
        [helper.make_node("Add", [STEP_LOGITS, OUTPUT_BIAS], ["earlier.biased"]),
         helper.make_node("LogSoftmax", ["earlier.biased"], ["log_probs"], axis=-1),
         helper.make_node("Gather", ["log_probs", "earlier.eos"], ["eos_log_prob"], axis=1)]
    )  # fmt: skip
    graph.input.extend(
        [helper.make_tensor_value_info(OUTPUT_BIAS, onnx.TensorProto.FLOAT, ["batch", "shortlist"]),
         helper.make_tensor_value_info(OUTPUT_VOCAB, onnx.TensorProto.INT64, ["shortlist"])]
    )  # fmt: skip
    graph.output.extend(
        [helper.make_tensor_value_info("log_probs", onnx.TensorProto.FLOAT, ["batch", "shortlist"]),
         helper.make_tensor_value_info("eos_log_prob", onnx.TensorProto.FLOAT, ["batch"])]
    )  # fmt: skip
    if own_top_k:
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([DECODER_TOP_K], np.int64), "top_k"))
        graph.node.extend(
            [helper.make_node("TopK", ["log_probs", "top_k"], ["top_log_probs", "top_positions"], axis=-1),
             helper.make_node("Gather", [OUTPUT_VOCAB, "top_positions"], ["top_ids"], axis=0)]
        )  # fmt: skip
        graph.output.extend(
            [helper.make_tensor_value_info("top_log_probs", onnx.TensorProto.FLOAT, ["batch", DECODER_TOP_K]),
             helper.make_tensor_value_info("top_ids", onnx.TensorProto.INT64, ["batch", DECODER_TOP_K])]
        )  # fmt: skip
    onnx.save(step, str(path))
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    manifest["sha256"]["decoder_step.onnx"] = sha256_file(path)
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_shortlist_is_refused_where_it_cannot_work(exported_int8: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(exported_int8, model)
    for size, problem in ((8, "must lie in 16..399"), (400, "must lie in 16..399")):
        with pytest.raises(SystemExit, match=problem):
            main(["shortlist", str(model), "--size", str(size), *_pairs(tiny_data_dir)])
    with pytest.raises(SystemExit, match="expected SRC-TGT=SOURCE_FILE,TARGET_FILE"):
        main(["shortlist", str(model), "--pairs", "en-fr=only-one-file"])
    en = tiny_data_dir / "multi30k/train.en.gz"
    with pytest.raises(SystemExit, match="pairs into de: not a language of"):
        main(["shortlist", str(model), "--size", "100", "--pairs", f"en-de={en},{en}"])
    short = tmp_path / "short.fr"
    short.write_text("une ligne\n")
    with pytest.raises(SystemExit, match="source lines but 1 target lines"):
        main(["shortlist", str(model), "--size", "100", "--pairs", f"en-fr={en},{short}"])
    with pytest.raises(SystemExit, match="expected LANG=FILE"):
        main(["shortlist", str(model), "--size", "100", "--sources", "en"])
    with pytest.raises(SystemExit, match="translates nothing from de"):
        main(["shortlist", str(model), "--size", "100", "--sources", f"de={en}"])
    assert main(["shortlist", str(model), "--size", "100", *_pairs(tiny_data_dir)]) == 0
    with pytest.raises(SystemExit, match="already has a shortlist"):
        main(["shortlist", str(model), "--size", "100", *_pairs(tiny_data_dir)])


def test_a_decoder_that_reads_a_shortlist_needs_its_output_layer_file(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(models[1], broken)
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    del manifest["files"]["output_layer"], manifest["sha256"]["output_layer.npz"]
    (broken / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="reads a shortlist, and the manifest names no output_layer file"):
        OnnxModel(broken, 1)


def test_steps_shortlisted_by_earlier_versions_decode_as_the_current_one(
    models: tuple[Path, Path], sentences: list[str], tmp_path: Path
) -> None:
    """A directory shortlisted by an earlier version normalises its logits in its step (log_probs), or
    keeps a TopK there too (top_log_probs, and top_ids through output_vocab): the runtime uses each as
    it is, and they decode as the current step whose host normalises its logits; the one with its own
    top-k as the runtime's top-k of its log-probs to the last bit, the current one within a few units
    in the last place of onnxruntime's log-softmax."""
    plain, own = tmp_path / "plain", tmp_path / "own"
    for model_dir, own_top_k in ((plain, False), (own, True)):
        shutil.copytree(models[1], model_dir)
        _earlier_step(model_dir, own_top_k)
    current, by_graph, by_own = OnnxModel(models[1], 2), OnnxModel(plain, 2), OnnxModel(own, 2)
    assert current.host_top_k and current.logits_eos == EOS_ID
    assert by_graph.host_top_k and by_graph.logits_eos is None and not by_own.host_top_k
    for model in (current, by_graph):
        model.host_projection = None
    _, _, expected = _search(current, sentences)
    _, _, normalised = _search(by_graph, sentences)
    _, _, got = _search(by_own, sentences)
    assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in normalised]
    assert [[h.score for h in hyps] for hyps in got] == [[h.score for h in hyps] for hyps in normalised]
    assert [[h.tokens for h in hyps] for hyps in normalised] == [[h.tokens for h in hyps] for hyps in expected]
    scores = [[h.score for h in hyps] for hyps in normalised], [[h.score for h in hyps] for hyps in expected]
    assert np.allclose(*scores, atol=1e-5)


def test_the_service_serves_a_shortlisted_model_and_names_it_in_its_metrics(
    models: tuple[Path, Path], sentences: list[str]
) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.api.settings import Settings

    body = {"texts": sentences[:4], "source": "en", "target": "fr"}
    answers = []
    for model in models:
        with TestClient(create_app(Settings(models=[model]))) as client:
            response = client.post("/v1/translate", json=body)
            assert response.status_code == 200, response.text
            answers.append([t["text"] for t in response.json()["translations"]])
            info = [line for line in client.get("/metrics").text.splitlines() if line.startswith("mtserve_model_info")]
            assert len(info) == 1 and ('-shortlist"' in info[0]) == (model == models[1]), info
    assert answers[0][:2] == answers[1][:2]  # memorised training sentences: the same with a shortlist


def test_a_model_without_parallel_text_gets_its_shortlist_from_its_own_translations(
    exported_int8: Path, tiny_data_dir: Path, sentences: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(exported_int8, model)
    english = tiny_data_dir / "multi30k/train.en.gz"
    assert main(["shortlist", str(model), "--size", str(SIZE), "--sources", f"en={english}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["languages"] == ["fr"] and "under 100,000 source sentences into fr" in report["warning"]
    assert 200 <= report["pairs"]["fr"] <= 800  # each sentence's best translations, up to 4
    plain, shortlisted = OnnxModel(exported_int8, 2), OnnxModel(model, 2)
    texts = sentences[:12]  # memorised: the model's own translations of these built the table
    sources = [[*plain.tokenizer.encode(text), EOS_ID] for text in texts]
    options = DecodeOptions(beam_size=5)
    tags = [TAG["fr"]] * len(sources)
    expected = [h[0].tokens for h in beam_search(plain, sources, tags, options)]
    assert [h[0].tokens for h in beam_search(shortlisted, sources, tags, options)] == expected
    # into English the model has no table: the whole vocabulary, as before
    tags = [TAG["en"]] * len(sources)
    assert [h[0].tokens for h in beam_search(shortlisted, sources, tags, options)] == [
        h[0].tokens for h in beam_search(plain, sources, tags, options)
    ]


def test_ctranslate2s_own_shortlist_from_the_table_holds_its_output_to_as_many_candidates(
    models: tuple[Path, Path], tiny_model_dir: Path, sentences: list[str], tmp_path: Path
) -> None:
    """The benchmarks' CTranslate2 with a vocabulary map (bench/ct2_convert.py): made from the same
    lexical table, it gives the median sentence as many candidates as the shortlist, and
    CTranslate2 decodes with it within them."""
    import ctranslate2
    import sentencepiece as spm

    from bench.ct2_convert import convert, vmap_from_shortlist

    shortlisted = models[1]
    sp = spm.SentencePieceProcessor(model_file=str(shortlisted / "spm.model"))
    sources = [[*sp.encode(text), EOS_ID] for text in sentences]
    vmap = vmap_from_shortlist(shortlisted, "fr", tmp_path / "vmap.txt", SIZE, sources)
    fixed_line, *token_lines = vmap.read_text(encoding="utf-8").splitlines()
    assert fixed_line.startswith("\t") and len(token_lines) == sp.get_piece_size()
    fixed = set(fixed_line.split())
    mapped = {key: set(values.split()) for key, values in (line.split("\t") for line in token_lines)}
    translator = ctranslate2.Translator(str(convert(tiny_model_dir, tmp_path / "ct2", "int8", vmap=vmap)))
    counts = []
    for source in sources:
        pieces = [sp.id_to_piece(i) for i in source]
        candidates = fixed.union(*(mapped[piece] for piece in pieces))
        counts.append(len(candidates))
        result = translator.translate_batch([pieces], target_prefix=[["<2fr>"]], beam_size=5, use_vmap=True)
        assert set(result[0].hypotheses[0][1:]) <= candidates
    assert sorted(counts)[len(counts) // 2] >= SIZE > min(counts)
