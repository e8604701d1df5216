"""The numpy beam search, batching and fill-mask on an exported tiny model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.conventions import EOS_ID
from service.runtime.beam import DecodeOptions, _pad_sources, beam_search, runaway
from service.runtime.fill_mask import FillMask, FillMaskError
from service.runtime.sessions import OnnxModel
from service.runtime.translator import MAX_SOURCE_TOKENS, Translator
from tests.conftest import TAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_model(exported: Path) -> OnnxModel:
    return OnnxModel(exported, intra_op_threads=2)  # two threads for a search alone, one for each of several


def _ids(model: OnnxModel, texts: list[str]) -> list[list[int]]:
    return [[*model.tokenizer.encode(text), EOS_ID] for text in texts]


def _teacher_forced_log_prob(model: OnnxModel, source: list[int], tag: int, tokens: list[int]) -> float:
    ids = np.asarray([source], dtype=np.int64)
    mask = np.ones_like(ids)
    enc = model.encode(ids, mask)
    cache, total = model.new_cache(1, len(tokens) + 1), 0.0
    for prev, nxt in zip([tag, *tokens], [*tokens, EOS_ID], strict=True):
        log_probs = model.decode_step(np.asarray([[prev]]), mask, cache, enc.cross)
        total += float(log_probs[0, nxt])
    return total


def test_n_best_is_sorted_and_scores_follow_the_length_penalty(onnx_model: OnnxModel, sentences: list[str]) -> None:
    tag = TAG["fr"]
    sources = _ids(onnx_model, sentences[:6])
    for alpha in (0.0, 1.0):
        options = DecodeOptions(beam_size=4, n_best=4, length_penalty=alpha)
        for source, hyps in zip(sources, beam_search(onnx_model, sources, [tag] * 6, options), strict=True):
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True) and len(hyps) == 4
            for h in hyps:
                log_prob = _teacher_forced_log_prob(onnx_model, source, tag, h.tokens)
                assert h.log_prob == pytest.approx(log_prob, abs=1e-4)
                assert h.score == pytest.approx(log_prob / h.length**alpha, abs=1e-4)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_sentence_translates_the_same_alone_and_in_any_batch(
    onnx_model: OnnxModel,
    sentences: list[str],
    beam_size: int,
) -> None:
    sources = _ids(onnx_model, sentences)
    options = DecodeOptions(beam_size=beam_size, n_best=beam_size)
    tags = [TAG["fr"] if i % 2 else TAG["en"] for i in range(len(sources))]
    batched = beam_search(onnx_model, sources, tags, options)
    for i in (0, 5, len(sources) - 1):
        alone = beam_search(onnx_model, [sources[i]], [tags[i]], options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert np.allclose([h.score for h in alone], [h.score for h in batched[i]], atol=1e-4)


def test_a_large_batch_in_the_memory_an_earlier_one_left_translates_as_in_fresh_memory(
    exported: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large search hands its cache and encoder outputs on to the next (kv_cache.StoragePool): what the
    earlier batch wrote there never reaches the next one's translations, and it all goes once the model
    idles (release_arena)."""
    model = OnnxModel(exported, intra_op_threads=1)
    made: list[Any] = []
    new_cache = model.new_cache

    def recorded(*args: Any, **kwargs: Any) -> Any:
        made.append(new_cache(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(model, "new_cache", recorded)
    options = DecodeOptions(beam_size=5, n_best=5)
    longest = sorted(sentences, key=len)
    earlier, later = _ids(model, longest[-16:] * 2), _ids(model, longest[:12])  # 160 and 60 rows: both large
    in_fresh_memory = beam_search(model, later, [TAG["fr"]] * len(later), options)
    assert model.release_arena()  # what the search left goes
    beam_search(model, earlier, [TAG["en"]] * len(earlier), options)
    in_its_memory = beam_search(model, later, [TAG["fr"]] * len(later), options)
    assert made[2].storage is made[1].storage  # the earlier batch's cache storage, taken again
    for fresh, reused in zip(in_fresh_memory, in_its_memory, strict=True):
        assert [(h.tokens, h.log_prob) for h in reused] == [(h.tokens, h.log_prob) for h in fresh]
    assert model.release_arena()
    beam_search(model, later, [TAG["fr"]] * len(later), options)
    assert made[3].storage is not made[1].storage  # let go when idle


def test_a_step_bound_at_one_row_a_sentence_decodes_its_beams_as_one_bound_at_the_beams(
    onnx_model: OnnxModel, sentences: list[str]
) -> None:
    """The step's binding follows the cache from one row per sentence to its beams (only the rows'
    inputs bound again): the next step reads every beam's history and writes every beam's output."""
    sources = _ids(onnx_model, sentences[:3])
    ids, mask = _pad_sources(sources, onnx_model.pad_id)
    cross = onnx_model.encode(ids, mask).cross
    tags, beams = np.full(len(sources), TAG["fr"]), 4
    followed = onnx_model.new_cache(len(sources), 3, beams)
    first = onnx_model.decode_top(tags[:, None], mask, followed, cross)
    followed.reorder(np.repeat(np.arange(len(sources)), beams))  # each sentence's row becomes its beams
    bound_at_beams = onnx_model.new_cache(len(sources), 3, beams)
    bound_at_beams.reorder(np.repeat(np.arange(len(sources)), beams))
    onnx_model.decode_top(np.repeat(tags, beams)[:, None], mask, bound_at_beams, cross)
    nxt = first.ids[:, :beams].reshape(-1, 1)  # each beam a different token
    after_follow = onnx_model.decode_top(nxt, mask, followed, cross)
    after_fresh = onnx_model.decode_top(nxt, mask, bound_at_beams, cross)
    assert after_follow.ids.shape == (len(sources) * beams, first.ids.shape[1])
    assert np.array_equal(after_follow.ids, after_fresh.ids)
    # step 0 ran at one row, not four, a sentence: its keys may differ in their last bits
    assert np.allclose(after_follow.log_probs, after_fresh.log_probs, atol=1e-5)
    assert len({tuple(row) for row in after_follow.ids}) > len(sources)  # the beams' histories differ


def _record_widths(model: OnnxModel, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each decoder step from now on ran on the wide session (True) or the narrow one."""
    decoder, used = model.decoder, []
    for session, wide in ((decoder.wide, True), (decoder.narrow, False)):

        def record(
            binding: object, options: object = None, run: Any = session.run_with_iobinding, w: bool = wide
        ) -> None:
            used.append(w)
            run(binding, options)

        monkeypatch.setattr(session, "run_with_iobinding", record)
    return used


def test_a_search_alone_takes_every_thread_and_concurrent_searches_one_each(
    onnx_model: OnnxModel, sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sentence alone decodes on all the configured threads, however small its batch, where the
    model's small searches are not held to one thread; two batches decoding at once (the service's
    workers) run on one thread each, even between their steps."""
    used = _record_widths(onnx_model, monkeypatch)
    assert not onnx_model.small_searches_narrow
    options, source = DecodeOptions(beam_size=5), _ids(onnx_model, sentences[:1])
    beam_search(onnx_model, source, [TAG["fr"]], options)
    assert used and all(used)

    used.clear()
    together = threading.Barrier(2)

    def worker() -> None:
        with onnx_model.searching():  # both searches in progress before either runs, until both are done
            together.wait()
            beam_search(onnx_model, source, [TAG["fr"]], options)
            together.wait()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert used and not any(used)


def test_small_searches_held_to_one_thread_leave_larger_batches_every_thread(
    onnx_model: OnnxModel, sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where one thread was measured faster for a small search, a sentence at beam 5 (five rows)
    decodes on one thread alone, and two sentences at beam 5 (ten rows) still on every thread."""
    used = _record_widths(onnx_model, monkeypatch)
    monkeypatch.setattr(onnx_model, "small_searches_narrow", True)
    options = DecodeOptions(beam_size=5)
    beam_search(onnx_model, _ids(onnx_model, sentences[:1]), [TAG["fr"]], options)
    assert used and not any(used)
    used.clear()
    beam_search(onnx_model, _ids(onnx_model, sentences[:2]), [TAG["fr"]] * 2, options)
    assert used and all(used)


def test_a_loaded_translator_measures_its_small_searches_alone(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Translator.load times a small search on one thread and on all, each width as it says even
    where small searches already take one thread; a model of one thread has nothing to choose, and
    a measurement while another search runs (which would hold both widths to one thread) leaves
    the choice as it was."""
    translator = Translator.load(exported, intra_op_threads=2)
    model = translator.model
    chosen = model.small_searches_narrow
    model.small_searches_narrow = True
    used = _record_widths(model, monkeypatch)
    assert translator.measure_small_searches() in (True, False)
    assert True in used and False in used
    monkeypatch.undo()
    assert Translator.load(exported, intra_op_threads=1).measure_small_searches() is None
    model.small_searches_narrow = chosen
    started, finish = threading.Event(), threading.Event()

    def other_search() -> None:
        with model.searching():
            started.set()
            finish.wait(30)

    other = threading.Thread(target=other_search)
    other.start()
    try:
        assert started.wait(30)
        assert translator.measure_small_searches() is None
        assert model.small_searches_narrow is chosen
    finally:
        finish.set()
        other.join()


def test_the_length_limit_holds(onnx_model: OnnxModel, sentences: list[str]) -> None:
    options = DecodeOptions(beam_size=3, max_length=4)
    for hyps in beam_search(onnx_model, _ids(onnx_model, sentences[:4]), [TAG["fr"]] * 4, options):
        assert len(hyps[0].tokens) <= 4


def test_the_repetition_guard_stops_runaway_loops() -> None:
    assert runaway([5, 5, 5, 5], 5)
    assert not runaway([5, 5, 5], 5)
    assert runaway([1, 7, 8, 7, 8, 7, 8], 7) is False and runaway([7, 8, 7, 8, 7, 8, 7], 8)
    assert not runaway([1, 2, 3, 4, 1, 2, 3], 5)


def test_translator_keeps_order_and_answers_empty_text(exported: Path, sentences: list[str]) -> None:
    translator = Translator.load(exported, intra_op_threads=1, batch_tokens=64)
    texts = [sentences[3], "", "   ", sentences[0], sentences[3]]
    out = translator.translate(texts, "fr", DecodeOptions(beam_size=2))
    assert out[1][0].text == "" and out[2][0].text == "   "  # no letters: back unchanged, as the HTTP routes do
    assert out[0][0].text == out[4][0].text and out[0][0].text
    assert [len(o) for o in out] == [1] * 5


def test_a_text_whose_search_kept_no_hypothesis_comes_back_empty_and_low(exported: Path, sentences: list[str]) -> None:
    """Under the repetition guard a search can end a sentence with no hypothesis (every candidate
    closing a loop): its text is then an empty translation marked low, not a missing one."""
    translator = Translator.load(exported, intra_op_threads=1)
    prepared = translator.prepare(sentences[0])
    (translation,) = translator.combine(prepared, [[] for _ in prepared.pieces], n_best=3)
    assert (translation.text, translation.quality, translation.target_tokens) == ("", "low", 0)
    assert translation.source_tokens == sum(len(piece) for piece in prepared.pieces)


def test_batches_decode_side_by_side_one_thread_each_and_translate_as_one_after_the_other(
    exported: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A translator with two threads runs two batches at once (the cores' host work overlapping),
    and the texts come back as one thread translating the batches in turn gives them, in order."""
    texts = sentences * 2
    alone = Translator.load(exported, intra_op_threads=1, batch_tokens=64)
    expected = alone.translate(texts, "fr", DecodeOptions(beam_size=3))
    two = Translator.load(exported, intra_op_threads=2, batch_tokens=64)
    assert len(two.batches([len(p) for t in texts for p in two.prepare(t).pieces])) > 2
    together, searching = threading.Barrier(2, timeout=60), two.model.searching
    entered, lock = [0], threading.Lock()

    @contextlib.contextmanager
    def side_by_side(rows: int = 0, narrow: bool | None = None) -> Iterator[None]:
        with lock:
            entered[0] += 1
            first_two = entered[0] <= 2
        if first_two:
            together.wait()  # the first two batches are in progress at once, or this times out
        with searching(rows, narrow):
            yield

    monkeypatch.setattr(two.model, "searching", side_by_side)
    progress: list[tuple[int, int]] = []
    out = two.translate(texts, "fr", DecodeOptions(beam_size=3), progress=lambda d, n: progress.append((d, n)))
    assert [[(h.text, h.score) for h in o] for o in out] == [[(h.text, h.score) for h in o] for o in expected]
    assert progress[-1] == (len(texts), len(texts)) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_long_input_is_split_not_truncated(exported: Path) -> None:
    translator = Translator.load(exported, intra_op_threads=1)
    ids = translator.tokenizer.encode(" ".join(["A man rides a bike."] * 120))
    pieces = translator.split_long(ids)
    assert len(pieces) > 1 and all(len(p) <= MAX_SOURCE_TOKENS for p in pieces)
    assert [t for p in pieces for t in p] == ids


def test_token_budget_batches_cover_everything_within_budget(exported: Path, sentences: list[str]) -> None:
    translator = Translator.load(exported, intra_op_threads=1, batch_tokens=100)
    lengths = [len(ids) for ids in _ids(translator.model, sentences)]
    batches = translator.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100 for b in batches)


def test_fill_mask_returns_whole_words_in_the_pipeline_shape(onnx_model: OnnxModel) -> None:
    filler = FillMask.from_model(onnx_model)
    single = filler.fill("A man in a <mask> shirt.", top_k=5)
    assert len(single) == 1 and len(single[0]) == 5
    scores = [c.score for c in single[0]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for c in single[0]:
        assert onnx_model.tokenizer.id_to_piece(c.token) == "▁" + c.token_str
        assert c.sequence == f"A man in a {c.token_str} shirt."
    double = filler.fill("A [MASK] in a <mask> shirt.", top_k=3)
    assert [len(row) for row in double] == [3, 3]
    assert double[0][0].sequence.endswith("in a <mask> shirt.")


def test_fill_mask_targets_and_errors(onnx_model: OnnxModel) -> None:
    filler = FillMask.from_model(onnx_model)
    (row,) = filler.fill("A <mask> is running.", targets=["man", "dog"])
    assert {c.token_str for c in row} <= {"man", "dog"}
    with pytest.raises(FillMaskError, match="<mask>"):
        filler.fill("No mask here.")
    with pytest.raises(FillMaskError, match="xqzv"):
        filler.fill("A <mask> runs.", targets=["xqzv"])


def test_translate_command_keeps_one_line_per_line(
    exported: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from service.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{sentences[0]}\n\n{sentences[1]}\n"))
    assert main(["translate", "--model", str(exported), "--threads", "1", "--beam-size", "2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2] and lines[3] == ""


def test_fill_command_prints_the_pipeline_shape(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from service.cli import main

    assert main(["fill", "--model", str(exported), "--threads", "1", "A <mask> runs.", "--top-k", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and set(rows[0]) == {"score", "token", "token_str", "sequence"}


def test_low_memory_sessions_translate_as_the_packed_ones(shared_data: Path) -> None:
    """MTSERVE_LOW_MEMORY changes where large batches read their weights, not what they compute."""
    from model.corpus import read_lines
    from service.manifest import DEFAULT_MODEL_DIR

    texts = read_lines(shared_data / "multi30k/test_2016_flickr.en.gz")[:40]  # 40 x beam 5: the wide session
    packed = Translator.load(DEFAULT_MODEL_DIR, 2)
    mapped = Translator.load(DEFAULT_MODEL_DIR, 2, low_memory=True)
    assert [t[0].text for t in mapped.translate(texts, "fr")] == [t[0].text for t in packed.translate(texts, "fr")]


LETTERLESS = ["😀", "3.14", "12:30 – 14:00", "!!! ???", "€ 45,00", "👍🏽  🎉", "(1) [2] {3}", "→ ← ↑"]


def test_segments_without_letters_come_back_unchanged_from_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from service.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("".join(t + "\n" for t in LETTERLESS)))
    assert main(["translate", "--threads", "1", "--target", "fr"]) == 0
    assert capsys.readouterr().out.split("\n")[: len(LETTERLESS)] == LETTERLESS
