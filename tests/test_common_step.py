"""The beam search's common step in C (service/runtime/_common_step.c) chooses as its numpy form:
the same hypotheses, scores to the last bit, on the committed model and on the tiny one (whose
loops and early endings take the other steps often), alone and in batches, under each of the
search's rules."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from model.corpus import read_lines
from service.conventions import EOS_ID
from service.manifest import DEFAULT_MODEL_DIR
from service.runtime import native
from service.runtime.beam import (
    COMMITTED,
    LOOP_WINDOW,
    DecodeOptions,
    Hypothesis,
    _Ahead,
    _Grid,
    _ranked_candidates,
    beam_search,
    runaway,
)
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
        self.loops, self.looped, self.kept = 0, 0, 0  # common_steps: calls, steps taken, rows ended there

    def __getattr__(self, name: str) -> object:  # what a shortlisted step calls besides: the module's own
        return getattr(self.module, name)

    def select_common(self, *args: object) -> tuple[int, int]:
        status, ended = self.module.select_common(*args)
        self.calls += 1
        self.common += status in (1, COMMITTED)
        self.committed += status == COMMITTED
        self.ending += status == 1 and ended > 0
        return int(status), int(ended)

    def reorder_history(self, *args: object) -> None:
        self.module.reorder_history(*args)

    def common_steps(self, *args: object) -> tuple[int, int, int, int, int, int]:
        committed, ran, length, kept, status, ended = self.module.common_steps(*args)
        self.loops += 1
        self.looped += committed
        self.kept += kept
        return int(committed), int(ran), int(length), int(kept), int(status), int(ended)


@pytest.mark.parametrize("model_name", ["committed", "tiny"])
def test_the_common_step_in_c_chooses_as_numpy(
    model_name: str,
    c_step: ModuleType,
    exported_int8: Path,
    shared_data: Path,
    sentences: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = DEFAULT_MODEL_DIR if model_name == "committed" else exported_int8
    texts = read_lines(shared_data / "multi30k/val.en.gz")[:16] if model_name == "committed" else sentences
    # Both with onnxruntime's self-attention: the host's (tests/test_segmented.py) needs the C module.
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", "off")
    model = OnnxModel(directory, 1)
    # The numpy side is the model as loaded without the C module, whose shortlisted projection the
    # graph makes rather than the host (projection.py): its logits are the host's to the bit, its
    # normalisation numpy's, within a few units in the last place of C's: the same tokens, the
    # scores within 1e-5. Without a shortlist, the same arithmetic both ways.
    with monkeypatch.context() as without_c:
        without_c.setattr(native, "common_step", None)
        model_without_c = OnnxModel(directory, 1)
    sources = [[*model.tokenizer.encode(text), EOS_ID] for text in texts]
    counted = _Counted(c_step)
    for options in RULES:
        for batch in (1, 5):
            monkeypatch.setattr(native, "common_step", counted)
            in_c = _search(model, sources, TAG["fr"], options, batch)
            monkeypatch.setattr(native, "common_step", None)
            in_numpy = _search(model_without_c, sources, TAG["fr"], options, batch)
            for mine, theirs in zip(in_c, in_numpy, strict=True):
                assert [h.tokens for h in mine] == [h.tokens for h in theirs], (options, batch)
                assert np.allclose([h.score for h in mine], [h.score for h in theirs], atol=1e-5), (options, batch)
            if model.output_layer is None:
                assert in_c == in_numpy, (options, batch)
    assert counted.common > 0.5 * counted.calls > 0
    assert counted.ending > 0  # steps where rows end were taken in C too
    # Most steps were taken in C's own loop (OnnxModel.common_steps), rows that ended among them.
    steps = counted.calls + counted.looped
    assert counted.looped > 0.3 * steps and counted.kept > 0
    assert counted.committed + counted.looped > 0.5 * steps


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


class _ScriptedGraph:
    """A decoder step's run for common_steps: each call writes the next step's candidates into the
    bound outputs, as the graph would, and may move the process's census after a given call."""

    def __init__(self, steps: list[tuple[np.ndarray, np.ndarray]], ids: np.ndarray, log_probs: np.ndarray) -> None:
        self.steps, self.ids, self.log_probs, self.calls = steps, ids, log_probs, 0
        self.census, self.move_census_at = np.zeros(1, np.int64), 0

    def __call__(self, binding: object) -> None:
        ids, log_probs = self.steps[self.calls]
        self.ids[:], self.log_probs[:] = ids, log_probs
        self.calls += 1
        if self.calls == self.move_census_at:
            self.census[0] += 1


def _candidates(rng: np.random.Generator, rows: int, eos_rows: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """One step's four best candidates per row, best first: distinct ids, EOS first in `eos_rows`."""
    ids = np.stack([rng.choice(np.arange(10, 60), 4, replace=False) for _ in range(rows)]).astype(np.int64)
    ids[list(eos_rows), 0] = 2
    log_probs = np.sort(-rng.random((rows, 4)), axis=1)[:, ::-1].astype(np.float32)
    return ids, log_probs


def test_the_c_loop_takes_steps_as_the_search_would_and_stops_where_it_says(c_step: ModuleType) -> None:
    """common_steps against select_common called step by step (the search's own loop): the same
    histories, scores, cache history, next ids and ended rows; it stops before a run once the census
    moves, after a step whose sentence would reach K endings (run, not taken), and at a full cache."""
    n, k, eos, capacity = 2, 2, 2, 9
    rows = n * k
    rng = np.random.default_rng(3)
    # Steps 0-2 go on; at step 3 sentence 0's first beam ends (1 of K); at step 5 both of its beams do.
    script = [_candidates(rng, rows, {3: (0,), 5: (0, 1)}.get(step, ())) for step in range(8)]

    def fresh() -> dict[str, np.ndarray]:
        history = np.zeros((rows, capacity), np.int32)
        history[:, :2] = np.arange(k)[None, :].repeat(n, 0).reshape(rows, 1)
        return {
            "history": history, "next_ids": np.full((rows, 1), 7, np.int64), "position": np.zeros((), np.int32),
            "top_ids": np.zeros((rows, 4), np.int64), "top_log_probs": np.zeros((rows, 4), np.float32),
            "hist": np.array([[11, 12], [11, 13], [21, 22], [21, 23]], np.int64), "scores": -np.ones((n, k)),
        }  # fmt: skip

    # The search's own loop, one step at a time: run, advance, select_common committing, endings kept.
    want, finished, kept, taken = fresh(), [0] * n, [], 0
    hist, scores, length = want["hist"], want["scores"], 2
    for step in range(len(script)):
        want["top_ids"][:], want["top_log_probs"][:] = script[step]
        want["history"][:, length] = np.tile(np.arange(k), n)
        length += 1
        outputs = _outputs(n, k, hist.shape[1])
        status, ended = c_step.select_common(want["top_ids"], want["top_log_probs"], scores, hist, k, eos, 0,
                                             *outputs, want["history"], length, want["next_ids"])  # fmt: skip
        next_rows, last, next_scores, next_hist, ended_rows, ended_scores, ended_sentences = outputs
        sentences = ended_sentences[:ended].tolist()
        if status == 0 or any(finished[s] + sentences.count(s) >= k for s in set(sentences)):
            left = (status, ended, next_rows.copy(), last.copy(), next_scores.copy(), next_hist.copy())
            break
        if status == 1:  # rows ended: the search takes the step and commits it itself
            c_step.reorder_history(want["history"], next_rows, k, length)
            want["next_ids"][:, 0] = last
        for s, row, score in zip(sentences, ended_rows[:ended].tolist(), ended_scores[:ended].tolist(), strict=True):
            finished[s] += 1
            kept.append((s, score, hist[row].tolist()))
        hist, scores, taken = next_hist, next_scores, taken + 1
    assert taken == 5 and len(kept) == 1  # steps 0-4; sentence 0 would reach K endings at step 5

    ahead = _Ahead(n, k, 10)  # room for 8 steps after 2 tokens
    for move_census_at, steps, expect_taken, expect_ran in ((0, 8, 5, 1), (2, 8, 2, 0), (0, 3, 3, 0), (0, 6, 5, 1)):
        got = fresh()
        graph = _ScriptedGraph(script, got["top_ids"], got["top_log_probs"])
        graph.move_census_at = move_census_at
        selection = ahead.selection(eos, 0, got["hist"], got["scores"], [0] * n)
        committed, ran, got_length, got_kept, status, ended = c_step.common_steps(
            graph, None, steps, graph.census, 0, got["position"], got["top_ids"], got["top_log_probs"],
            got["history"], got["next_ids"], 2, *selection,
        )  # fmt: skip
        assert (committed, ran) == (expect_taken, expect_ran), move_census_at
        assert graph.calls == committed + ran and got_length == 2 + graph.calls
        if committed == taken:
            got_hist, got_scores, _, _ = ahead.after(committed, n, 2 + committed)
            np.testing.assert_array_equal(got_hist, hist)
            np.testing.assert_array_equal(got_scores, scores)
            np.testing.assert_array_equal(got["history"], want["history"])  # step 5 advanced it, no more
            np.testing.assert_array_equal(got["next_ids"], want["next_ids"])
            assert ahead.ended(got_kept) == kept
            assert int(got["position"]) == got_length - 1  # the last run's position
        if ran:  # the step left to the search, selected as select_common selects it
            assert (status, ended) == left[:2]
            chosen = ahead.chosen(committed, status, ended, n, 2 + committed)
            assert chosen is not None and len(chosen.ended) == ended > 0
            for got_array, want_array in zip(chosen[:4], left[2:], strict=True):
                np.testing.assert_array_equal(got_array, want_array)

    # A full cache stops it before a run: two positions left, two steps.
    got = fresh()
    graph = _ScriptedGraph(script, got["top_ids"], got["top_log_probs"])
    selection = ahead.selection(eos, 0, got["hist"], got["scores"], [0] * n)
    committed, ran, got_length, *_ = c_step.common_steps(
        graph, None, 8, graph.census, 0, got["position"], got["top_ids"], got["top_log_probs"], got["history"],
        got["next_ids"], capacity - 2, *selection,
    )  # fmt: skip
    assert (committed, ran, got_length, graph.calls) == (2, 0, capacity, 2)


def test_the_c_loop_leaves_a_step_whose_token_closes_a_loop(c_step: ModuleType) -> None:
    """With the guard on, a step whose token repeats a 1-gram a fifth time (beam.py's runaway) is
    run and left to the search; one that only comes among the last tokens is taken."""
    k, eos = 1, 2
    history, next_ids = np.zeros((1, 12), np.int32), np.zeros((1, 1), np.int64)
    top_ids, top_log_probs, position = np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), np.zeros((), np.int32)
    script = [(np.array([[9, 8]]), np.array([[-0.1, -0.2]], np.float32))] * 6
    graph = _ScriptedGraph(script, top_ids, top_log_probs)
    ahead = _Ahead(1, k, 10)
    hist = np.array([[5, 9, 9]], np.int64)  # 9 twice: the third and fourth 9 go on, the fifth closes a loop
    assert not runaway([5, 9, 9, 9], 9) and runaway([5, 9, 9, 9, 9], 9)
    selection = ahead.selection(eos, LOOP_WINDOW, hist, np.zeros((1, 1)), [0])
    taken = c_step.common_steps(
        graph, None, 6, graph.census, 0, position, top_ids, top_log_probs, history, next_ids, 3, *selection
    )
    assert taken == (2, 1, 6, 0, 2, 0)  # the third step: status 2, its token left to the guard's own check
    np.testing.assert_array_equal(ahead.after(taken[0], 1, 5)[0], [[5, 9, 9, 9, 9]])


def test_the_c_loop_refuses_arrays_that_do_not_agree(c_step: ModuleType) -> None:
    k, n = 2, 1
    hist, scores = np.zeros((k, 3), np.int64), np.zeros((n, k))
    ahead = _Ahead(n, k, 8)
    selection = list(ahead.selection(2, 0, hist, scores, [0]))
    args = [print, None, 2, np.zeros(1, np.int64), 0, np.zeros((), np.int32), np.zeros((k, 4), np.int64),
            np.zeros((k, 4), np.float32), np.zeros((k, 8), np.int32), np.zeros((k, 1), np.int64), 0]  # fmt: skip
    with pytest.raises(ValueError, match="shapes"):  # histories longer than the pair's room for 8 steps
        c_step.common_steps(*args[:2], 8, *args[3:], *selection)
    with pytest.raises(TypeError, match="position"):
        c_step.common_steps(*args[:5], np.zeros((), np.int64), *args[6:], *selection)
    aliased = selection.copy()
    aliased[3] = aliased[5]  # the first step would write the history it reads
    with pytest.raises(ValueError, match="shapes"):
        c_step.common_steps(*args, *aliased)


def _projection_graph(depth: int) -> ort.InferenceSession:
    """The tail of a shortlisted int8 step as export/shortlist.py leaves it: the per-row codes times
    the union's columns, each row's bias, the log-softmax."""
    node = helper.make_node
    graph = helper.make_graph(
        [
            node("MatMulIntegerToFloat", ["codes", "weight", "row_scale", "col_scale", "zero"], ["logits"],
                 domain="com.microsoft"),
            node("Add", ["logits", "bias"], ["biased"]),
            node("LogSoftmax", ["biased"], ["log_probs"], axis=-1),
        ],
        "projection",
        [
            helper.make_tensor_value_info("codes", TensorProto.UINT8, [None, depth]),
            helper.make_tensor_value_info("weight", TensorProto.INT8, [depth, None]),
            helper.make_tensor_value_info("row_scale", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("col_scale", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("zero", TensorProto.UINT8, []),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [None, None]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None]) for name in ("logits", "log_probs")],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), options)


@pytest.mark.parametrize(
    ("sentences", "beams", "width", "depth"),
    [(1, 5, 1024, 256), (1, 1, 40, 256), (3, 5, 200, 256), (8, 5, 16, 256), (13, 5, 1000, 256), (2, 5, 300, 132)],
)
def test_the_hosts_projection_gives_the_graphs_logits_and_ranks_as_its_log_softmax(
    c_step: ModuleType, sentences: int, beams: int, width: int, depth: int
) -> None:
    """Every kernel the CPU runs (AMX, AVX-512 VNNI, AVX-VNNI, AVX2, plain C) makes the logits of
    onnxruntime's MatMulIntegerToFloat to the last bit, from 7-bit weights, also at a depth that AMX's
    blocks of 64 bytes do not divide; after each sentence's bias, the top-k
    and EOS's log-prob are those of its LogSoftmax, a union of any width. A scratch of one tile of
    rows (what the runtime binds) ranks them as one of every row."""
    k, eos = 10, 3
    rng = np.random.default_rng(width + sentences)
    rows = sentences * beams
    codes = rng.integers(1, 256, (rows, depth)).astype(np.uint8)
    weight = rng.integers(-64, 65, (depth, width)).astype(np.int8)
    row_scale = (rng.random((rows, 1)) * 4 + 1).astype(np.float32)  # a layer norm's row range
    col_scale = (rng.random(width) * 2e-4 / 127).astype(np.float32)
    sentence_bias = np.where(rng.random((sentences, width)) < 0.6, 0.0, -np.inf).astype(np.float32)
    sentence_bias[:, : k + 1] = 0.0  # EOS and at least k candidates each
    bias = np.repeat(sentence_bias, beams, axis=0)
    feeds = {"codes": codes, "weight": weight, "row_scale": row_scale, "col_scale": col_scale,
             "zero": np.array(128, np.uint8), "bias": bias}  # fmt: skip
    logits, log_probs = _projection_graph(depth).run(None, feeds)
    padded = -(-width // 16) * 16
    packed = np.empty(padded * depth, np.int8)
    c_step.pack_projection(weight, packed)
    col_sums, scales = np.zeros(padded, np.int32), np.zeros(padded, np.float32)
    col_sums[:width], scales[:width] = weight.astype(np.int32).sum(axis=0), col_scale
    vocab = np.arange(width, dtype=np.int64) * 3
    best = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    for kernel in c_step.projection_kernels():
        scratch = np.empty((rows, padded), np.float32)
        values, ids, eos_out = (
            np.empty((rows, k), np.float32),
            np.empty((rows, k), np.int64),
            np.empty(rows, np.float32),
        )
        projection = (codes, row_scale, packed, col_sums, scales, sentence_bias, eos, eos_out, kernel)
        c_step.top_k(scratch, vocab, values, ids, projection)
        allowed = np.isfinite(bias)
        assert np.array_equal(scratch[:, :width][allowed] - bias[allowed], logits[allowed]), kernel
        assert np.array_equal(ids, vocab[best]), kernel
        np.testing.assert_allclose(values, np.take_along_axis(log_probs, best, axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eos_out, log_probs[:, eos], rtol=1e-5, atol=1e-5)
        tile = np.empty((min(rows, c_step.PROJECTED_TILE), padded), np.float32)
        again_values, again_ids, again_eos = np.empty_like(values), np.empty_like(ids), np.empty_like(eos_out)
        c_step.top_k(tile, vocab, again_values, again_ids, (*projection[:7], again_eos, kernel))
        assert np.array_equal(again_values, values) and np.array_equal(again_ids, ids), kernel
        assert np.array_equal(again_eos, eos_out), kernel


def _float_projection_graph(depth: int) -> ort.InferenceSession:
    """The tail of a shortlisted fp32 step as export/shortlist.py leaves it: the rows times the union's
    rows of the output layer (a Gemm with transB), each row's bias, the log-softmax."""
    node = helper.make_node
    graph = helper.make_graph(
        [
            node("Gemm", ["rows", "weight"], ["logits"], transB=1),
            node("Add", ["logits", "bias"], ["biased"]),
            node("LogSoftmax", ["biased"], ["log_probs"], axis=-1),
        ],
        "projection",
        [
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, depth]),
            helper.make_tensor_value_info("weight", TensorProto.FLOAT, [None, depth]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [None, None]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None]) for name in ("logits", "log_probs")],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), options)


@pytest.mark.parametrize(
    ("sentences", "beams", "width", "depth"), [(1, 5, 1024, 256), (3, 5, 200, 384), (13, 5, 1000, 256), (2, 1, 40, 100)]
)
def test_the_hosts_fp32_projection_gives_the_graphs_logits_and_ranks_as_its_log_softmax(
    c_step: ModuleType, sentences: int, beams: int, width: int, depth: int
) -> None:
    """An fp32 step's rows times the union's rows of the output layer, on the host (AVX-512 where the
    CPU has it, and plain C), equal onnxruntime's Gemm to the last bit (it sums the depth in runs of
    128, as _projection.c does); the top-k and EOS's log-prob after each sentence's bias are those of
    its LogSoftmax, in a scratch of every row and in one of a tile."""
    k, eos = 10, 3
    rng = np.random.default_rng(width + depth)
    total = sentences * beams
    rows = rng.standard_normal((total, depth)).astype(np.float32)
    weight = (rng.standard_normal((width, depth)) * 0.05).astype(np.float32)
    sentence_bias = np.where(rng.random((sentences, width)) < 0.6, 0.0, -np.inf).astype(np.float32)
    sentence_bias[:, : k + 1] = (rng.standard_normal(k + 1) * 0.1).astype(np.float32)  # a bias of its own
    bias = np.repeat(sentence_bias, beams, axis=0)
    logits, log_probs = _float_projection_graph(depth).run(None, {"rows": rows, "weight": weight, "bias": bias})
    padded = -(-width // 16) * 16
    packed = np.empty(padded * depth, np.float32)
    c_step.pack_projection(weight, packed)
    vocab = np.arange(width, dtype=np.int64) * 3
    best = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    widest, _name = c_step.projection_kernel()
    for kernel in sorted({0, widest}):  # the fp32 kernels: plain C, and AVX-512's from kernel 3
        for scratch_rows in (total, min(total, c_step.FLOAT_PROJECTED_TILE)):
            scratch = np.empty((scratch_rows, padded), np.float32)
            values, ids, eos_out = (
                np.empty((total, k), np.float32),
                np.empty((total, k), np.int64),
                np.empty(total, np.float32),
            )
            c_step.top_k(scratch, vocab, values, ids, (rows, packed, sentence_bias, eos, eos_out, kernel))
            if scratch_rows == total:
                allowed = np.isfinite(bias)
                assert np.array_equal(scratch[:, :width][allowed], (logits + bias)[allowed]), kernel
            assert np.array_equal(ids, vocab[best]), kernel
            np.testing.assert_allclose(values, np.take_along_axis(log_probs, best, axis=1), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(eos_out, log_probs[:, eos], rtol=1e-5, atol=1e-5)


def test_the_hosts_projection_refuses_arrays_that_do_not_agree(c_step: ModuleType) -> None:
    weight = np.zeros((256, 40), np.int8)
    with pytest.raises(ValueError, match="pack_projection"):
        c_step.pack_projection(weight, np.empty(40 * 256, np.int8))  # not padded to 48 columns
    packed = np.empty(48 * 256, np.int8)
    c_step.pack_projection(weight, packed)
    codes, row_scale = np.zeros((5, 256), np.uint8), np.ones((5, 1), np.float32)
    sums, scales, bias = np.zeros(48, np.int32), np.ones(48, np.float32), np.zeros((1, 40), np.float32)
    values, ids, eos_out = np.empty((5, 4), np.float32), np.empty((5, 4), np.int64), np.empty(5, np.float32)
    vocab = np.arange(40, dtype=np.int64)
    widest, _name = c_step.projection_kernel()
    good = (codes, row_scale, packed, sums, scales, bias, 3, eos_out, widest)
    c_step.top_k(np.empty((5, 48), np.float32), vocab, values, ids, good)
    for bad in (
        (codes, row_scale, packed, sums, scales, bias, 3, eos_out, widest + 1),  # a kernel the CPU lacks
        (
            codes,
            row_scale,
            packed,
            sums,
            scales,
            np.zeros((2, 40), np.float32),
            3,
            eos_out,
            widest,
        ),  # 5 rows, 2 sentences
        (codes, row_scale, packed, sums, scales, bias, 40, eos_out, widest),  # EOS outside the union
    ):
        with pytest.raises(ValueError, match="top_k"):
            c_step.top_k(np.empty((5, 48), np.float32), vocab, values, ids, bad)
    with pytest.raises(ValueError, match="top_k"):  # scratch not padded to whole groups
        c_step.top_k(np.empty((5, 40), np.float32), vocab, values, ids, good)
    rows, float_packed = np.zeros((5, 256), np.float32), np.empty(48 * 256, np.float32)
    c_step.pack_projection(np.zeros((40, 256), np.float32), float_packed)  # an fp32 step's rows of the union
    c_step.top_k(np.empty((5, 48), np.float32), vocab, values, ids, (rows, float_packed, bias, 3, eos_out, widest))
    with pytest.raises(ValueError, match="pack_projection"):
        c_step.pack_projection(np.zeros((40, 256), np.float32), np.empty(40 * 256, np.float32))
    for bad_float in (
        (rows, float_packed[: 40 * 256], bias, 3, eos_out, widest),  # packed for 40 columns, not 48
        (np.zeros((5, 255), np.float32), float_packed, bias, 3, eos_out, widest),  # rows of another depth
        (rows, float_packed, bias, 3, eos_out, widest + 1),  # a kernel the CPU lacks
    ):
        with pytest.raises(ValueError, match="top_k"):
            c_step.top_k(np.empty((5, 48), np.float32), vocab, values, ids, bad_float)


def test_the_hosts_projection_refuses_each_kernel_the_cpu_lacks_and_runs_the_others(c_step: ModuleType) -> None:
    """A CPU with AVX-512 VNNI may lack AVX-VNNI (AMD's Zen 4): the kernels that run are not simply
    those up to the widest, and a kernel named that does not run is refused, not executed."""
    kernels = c_step.projection_kernels()
    widest, _name = c_step.projection_kernel()
    assert kernels[0] == 0 and kernels[-1] == widest and list(kernels) == sorted(set(kernels))
    packed = np.empty(48 * 256, np.int8)
    c_step.pack_projection(np.zeros((256, 40), np.int8), packed)
    codes, row_scale = np.zeros((5, 256), np.uint8), np.ones((5, 1), np.float32)
    sums, scales, bias = np.zeros(48, np.int32), np.ones(48, np.float32), np.zeros((1, 40), np.float32)
    values, ids, eos_out = np.empty((5, 4), np.float32), np.empty((5, 4), np.int64), np.empty(5, np.float32)
    for kernel in range(-1, 6):
        projection = (codes, row_scale, packed, sums, scales, bias, 3, eos_out, kernel)
        if kernel in kernels:
            c_step.top_k(np.empty((5, 48), np.float32), np.arange(40, dtype=np.int64), values, ids, projection)
            assert np.array_equal(values, np.full((5, 4), -np.log(40), np.float32)), kernel  # 40 equal logits
        else:
            with pytest.raises(ValueError, match="top_k"):
                c_step.top_k(np.empty((5, 48), np.float32), np.arange(40, dtype=np.int64), values, ids, projection)


@pytest.mark.parametrize("width", [1, 15, 16, 17, 100, 1024, 1029])
def test_the_log_softmax_sums_a_row_alike_in_avx2_and_avx512(c_step: ModuleType, width: int) -> None:
    """The log-softmax's normaliser in AVX2's vectors gives the AVX-512 one's sum bit for bit (16
    lanes as two halves), so that a CPU without AVX-512 ranks and scores as one with it; plain C's
    within rounding; a CPU's missing vectors are refused."""
    rng = np.random.default_rng(width)
    row = (rng.standard_normal(width) * 4).astype(np.float32)
    row[rng.random(width) < 0.2] = -np.inf
    row[0] = 1.5
    top = float(row[np.isfinite(row)].max())
    widest = c_step.float_vectors()
    sums = [c_step.exp_sum(row, top, vectors) for vectors in range(widest + 1)]
    expected = float(np.exp(row[np.isfinite(row)].astype(np.float64) - top).sum())
    assert all(abs(total - expected) <= 1e-5 * expected for total in sums)
    if widest == 2:
        assert sums[1] == sums[2]
    with pytest.raises(ValueError, match="no vectors"):
        c_step.exp_sum(row, top, widest + 1)
