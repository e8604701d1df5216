"""The beam search's common step in C (service/runtime/_common_step.c) chooses as its numpy form:
the same hypotheses, scores to the last bit, on the committed model and on the tiny one (whose
loops and early endings take the other steps often), alone and in batches, under each of the
search's rules."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from model.corpus import read_lines
from service.conventions import EOS_ID
from service.manifest import DEFAULT_MODEL_DIR
from service.runtime import native
from service.runtime.beam import COMMITTED, DecodeOptions, Hypothesis, _Grid, _ranked_candidates, beam_search
from service.runtime.sessions import OnnxModel
from tests.conftest import TAG

pytestmark = pytest.mark.slow


@pytest.fixture
def c_step() -> ModuleType:
    assert native.common_step is not None, native.NOT_BUILT
    return native.common_step


RULES = [
    DecodeOptions(),
    DecodeOptions(beam_size=4, n_best=3, early_stopping=False),
    DecodeOptions(min_length=6, forced_eos=True, max_length=14, proportional_limit=False),
    DecodeOptions(repetition_guard=False, cut_degenerate=False),
    DecodeOptions(beam_size=8, n_best=2, length_penalty=0.6),
]


def _search(
    model: OnnxModel, sources: list[list[int]], tag: int, options: DecodeOptions, batch: int
) -> list[list[Hypothesis]]:
    out: list[list[Hypothesis]] = []
    for start in range(0, len(sources), batch):
        chunk = sources[start : start + batch]
        out += beam_search(model, chunk, [tag] * len(chunk), options)
    return out


class _Counted:
    """The C module, its common steps counted: that the C path ran, and took most steps."""

    def __init__(self, module: ModuleType) -> None:
        self.module, self.common, self.calls, self.ending, self.committed = module, 0, 0, 0, 0

    def select_common(self, *args: object) -> tuple[int, int]:
        status, ended = self.module.select_common(*args)
        self.calls += 1
        self.common += status in (1, COMMITTED)
        self.committed += status == COMMITTED
        self.ending += status == 1 and ended > 0
        return int(status), int(ended)

    def reorder_history(self, *args: object) -> None:
        self.module.reorder_history(*args)


@pytest.mark.parametrize("model_name", ["committed", "tiny"])
def test_the_common_step_in_c_chooses_as_numpy(
    model_name: str,
    c_step: ModuleType,
    exported_int8: Path,
    shared_data: Path,
    sentences: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if model_name == "committed":
        model = OnnxModel(DEFAULT_MODEL_DIR, 1)
        texts = read_lines(shared_data / "multi30k/val.en.gz")[:16]
    else:
        model = OnnxModel(exported_int8, 1)
        texts = sentences
    sources = [[*model.tokenizer.encode(text), EOS_ID] for text in texts]
    counted = _Counted(c_step)
    for options in RULES:
        for batch in (1, 5):
            monkeypatch.setattr(native, "common_step", counted)
            in_c = _search(model, sources, TAG["fr"], options, batch)
            monkeypatch.setattr(native, "common_step", None)
            in_numpy = _search(model, sources, TAG["fr"], options, batch)
            assert in_c == in_numpy, (options, batch)
    assert counted.common > 0.5 * counted.calls > 0
    assert counted.ending > 0  # steps where rows end were taken in C too
    assert counted.committed > 0.3 * counted.calls  # and most common ones committed there (OnnxModel.step_again)


def _outputs(n: int, k: int, length: int) -> tuple[np.ndarray, ...]:
    """select_common's output arrays for n sentences at beam k over histories of `length`."""
    rows = n * k
    return (
        np.empty(rows, np.int64), np.empty(rows, np.int64), np.empty((n, k)), np.empty((rows, length + 1), np.int64),
        np.empty(rows, np.int64), np.empty(rows), np.empty(rows, np.int64),
    )  # fmt: skip


def test_the_c_step_refuses_arrays_that_do_not_agree(c_step: ModuleType) -> None:
    k, n = 2, 1
    ids, log_probs = np.zeros((k, 2 * k), np.int64), np.zeros((k, 2 * k), np.float32)
    scores, hist = np.zeros((n, k)), np.zeros((k, 3), np.int64)
    outputs = _outputs(n, k, 3)
    with pytest.raises(TypeError, match="log_probs"):
        c_step.select_common(ids, log_probs.astype(np.float64), scores, hist, k, 0, 4, *outputs)
    with pytest.raises(ValueError, match="shapes"):
        c_step.select_common(ids, log_probs, scores, hist[:, :2], k, 0, 4, *outputs)
    with pytest.raises(ValueError, match="shapes"):
        c_step.select_common(ids, log_probs, scores, hist, k, 0, 4, *outputs[:4], *_outputs(n, 1, 3)[4:])
    ids[:] = [[5, 6, 9, 10], [7, 8, 11, 12]]  # a step taken whole (EOS 0 nowhere), so that it would be committed
    history = np.zeros((k, 4), np.int32)
    step = (ids, log_probs, scores, hist, k, 0, 4, *outputs)
    next_ids = np.zeros((k, 1), np.int64)
    with pytest.raises(ValueError, match="next_ids"):
        c_step.select_common(*step, history, 2, np.zeros((k, 2), np.int64))
    with pytest.raises(TypeError, match="history"):
        c_step.select_common(*step, history.astype(np.int64), 2, next_ids)
    with pytest.raises(ValueError, match="shapes"):
        c_step.select_common(*step, history, 5, next_ids)
    with pytest.raises(TypeError, match="together"):
        c_step.select_common(*step, history)


def test_the_c_step_ranks_ties_endings_and_impossible_candidates_as_numpy(c_step: ModuleType) -> None:
    """Against the search's own numpy ranking and rules: among each sentence's 2K best, an EOS among
    the first K possible candidates ends its row and the first K others go on. Scores on a coarse
    grid tie often; EOS and -inf among the candidates end rows or leave fewer than K to go on."""
    rng = np.random.default_rng(7)
    eos, seen = 2, {"common": 0, "ending": 0, "not taken": 0, "committed": 0}
    for trial in range(600):
        k, n = int(rng.integers(1, 9)), int(rng.integers(1, 4))
        beams = 1 if trial % 5 == 0 else k
        rows, width = n * beams, 2 * k
        ids = np.stack([rng.choice(np.arange(3, 40), 2 * 8, replace=False) for _ in range(rows)]).astype(np.int64)
        for _ in range(int(rng.integers(1, 4)) if trial % 2 == 0 else 0):
            ids[rng.integers(0, rows), rng.integers(0, width)] = eos
        log_probs = -rng.integers(0, 4, (rows, 2 * 8)).astype(np.float32) / 2
        if trial % 7 == 0:
            log_probs[rng.integers(0, rows), rng.integers(0, width)] = -np.inf
        if trial % 4 == 1:  # few possible candidates in each row
            log_probs[:, rng.integers(0, k) :] = -np.inf
        scores = -rng.integers(0, 3, (n, beams)).astype(np.float64)
        hist = rng.integers(3, 40, (rows, int(rng.integers(0, 6)))).astype(np.int64)
        outputs = _outputs(n, k, hist.shape[1])
        status, ended = c_step.select_common(ids, log_probs, scores, hist, k, eos, 0, *outputs)
        next_rows, last, next_scores, next_hist, ended_rows, ended_scores, ended_sentences = outputs
        # The same step committed where it is taken whole: the cache's history reordered and the
        # next ids written; anything else leaves both as they were.
        history = rng.integers(0, k, (n * k, 12)).astype(np.int32)
        next_ids, length = np.full((n * k, 1), -1, np.int64), int(rng.integers(0, 13))
        committed_history, committed_ids = history.copy(), next_ids.copy()
        step = (ids, log_probs, scores, hist, k, eos, 0, *_outputs(n, k, hist.shape[1]))
        got = c_step.select_common(*step, committed_history, length, committed_ids)
        if status == 1 and ended == 0 and beams == k:
            assert got == (COMMITTED, 0), trial
            seen["committed"] += 1
            reordered = history.copy()
            reordered[:, :length] = history[next_rows, :length]
            np.testing.assert_array_equal(committed_history, reordered)
            np.testing.assert_array_equal(committed_ids[:, 0], last)
        else:
            assert got == (status, ended), trial
            np.testing.assert_array_equal(committed_history, history)
            np.testing.assert_array_equal(committed_ids, next_ids)
        top_scores, token, parents = _ranked_candidates(
            ids[:, :width], log_probs[:, :width], scores, _Grid(n, beams, width), width
        )
        valid = top_scores > -np.inf
        ending = (token == eos) & valid & (np.cumsum(valid, axis=1) <= k)
        going = valid & (token != eos)
        takeable = bool((going.sum(axis=1) >= k).all())
        assert status == int(takeable), trial
        if not takeable:
            seen["not taken"] += 1
            continue
        seen["ending" if ending.any() else "common"] += 1
        order = np.argsort(~going, axis=1, kind="stable")[:, :k]  # the first K that go on, in rank order
        by_row = np.arange(n)[:, None]
        want_rows, want_last = parents[by_row, order].ravel(), token[by_row, order].ravel()
        np.testing.assert_array_equal(next_rows, want_rows)
        np.testing.assert_array_equal(last, want_last)
        np.testing.assert_array_equal(next_scores, top_scores[by_row, order])
        np.testing.assert_array_equal(next_hist, np.concatenate((hist[want_rows], want_last[:, None]), axis=1))
        sentence, rank = np.nonzero(ending)
        assert ended == len(sentence), trial
        np.testing.assert_array_equal(ended_sentences[:ended], sentence)
        np.testing.assert_array_equal(ended_rows[:ended], parents[sentence, rank])
        np.testing.assert_array_equal(ended_scores[:ended], top_scores[sentence, rank])
    assert min(seen.values()) > 50, seen


def test_the_c_step_flags_a_token_among_its_rows_last_ones(c_step: ModuleType) -> None:
    """Status 2: a chosen token is among the last `window` of the row it extends (the search then
    asks the guard's own rule whether it closes a loop)."""
    ids = np.array([[5, 6]], np.int64)
    log_probs = np.array([[-0.1, -0.2]], np.float32)
    scores = np.zeros((1, 1))
    outputs = _outputs(1, 1, 3)
    for hist, window, status in (([5, 9, 9], 4, 2), ([5, 9, 9], 2, 1), ([9, 9, 9], 4, 1), ([5, 9, 9], 0, 1)):
        got, _ = c_step.select_common(ids, log_probs, scores, np.array([hist], np.int64), 1, 2, window, *outputs)
        assert got == status, (hist, window)


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
@pytest.mark.parametrize(("vocab", "width", "taken"), [(8000, 256, 1024), (300, 250, 37), (40, 7, 16), (20, 16, 3)])
def test_the_output_layers_columns_in_c_are_numpys(
    c_step: ModuleType, dtype: type, vocab: int, width: int, taken: int
) -> None:
    # a batch's union, padded at its end with its last id as the shortlist pads it; every width and
    # count, whole blocks of 16 and not
    rng = np.random.default_rng(vocab + width)
    columns: np.ndarray = rng.integers(-127, 128, (width, vocab)).astype(dtype)
    ids = np.sort(rng.choice(vocab, taken, replace=False))
    ids = np.concatenate((ids, np.full(5, ids[-1])))
    out: np.ndarray = np.empty((width, len(ids)), dtype)
    c_step.take_columns(np.ascontiguousarray(columns.T), ids, out)
    assert np.array_equal(out, columns[:, ids])


def test_the_c_gather_refuses_ids_outside_the_rows_and_mismatched_arrays(c_step: ModuleType) -> None:
    rows = np.zeros((10, 4), np.int8)
    with pytest.raises(IndexError, match="outside the 10 rows"):
        c_step.take_columns(rows, np.array([0, 10]), np.empty((4, 2), np.int8))
    with pytest.raises(ValueError, match="must be"):
        c_step.take_columns(rows, np.array([0, 1]), np.empty((2, 4), np.int8))
    with pytest.raises(TypeError, match="out"):
        c_step.take_columns(rows, np.array([0, 1]), np.empty((4, 2), np.float32))
