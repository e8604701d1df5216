"""The decoder cache's bookkeeping: what each row reads through the indirection must be what a
cache that physically moved every row would hold, through beam choices, widening after step 0,
and compactions; with its reorder in C and in numpy (the `common_step` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime.kv_cache import SelfAttentionCache, StoragePool, compact_rows, compaction_order, storage_floats

HEADS, HEAD_DIM = 2, 3


def _write_step(cache: SelfAttentionCache, rng: np.random.Generator) -> list[np.ndarray]:
    """What the decoder step does: position `length` of every row gets a new key and value."""
    new = [rng.standard_normal((cache.rows, HEADS, HEAD_DIM)).astype(np.float32) for _ in cache.buffers]
    for buffer, value in zip(cache.buffers, new, strict=True):
        buffer[:, :, cache.length] = value
    cache.advance()
    return new


def _read(cache: SelfAttentionCache) -> list[np.ndarray]:
    """Each row's history [rows, H, length, K] as the attention kernel reads it."""
    n, beams = cache.length, cache.beams
    sentence = np.arange(cache.rows) // beams
    held_by = sentence[:, None] * beams + cache.indirection.reshape(cache.rows, -1)[:, :n]  # [rows, n]
    positions = np.arange(n)[None, :]
    return [buffer[held_by, :, positions].transpose(0, 2, 1, 3) for buffer in cache.buffers]


def test_rows_read_what_a_physically_reordered_cache_holds(common_step: str) -> None:
    rng = np.random.default_rng(0)
    sentences, beams = 6, 3
    cache = SelfAttentionCache(2, HEADS, HEAD_DIM, sentences, capacity=12, max_beams=beams)
    # The reference: one growing array per buffer, rows gathered and dropped every step.
    reference = [np.zeros((sentences, HEADS, 0, HEAD_DIM), np.float32) for _ in cache.buffers]
    alive = sentences
    for step in range(10):
        new = _write_step(cache, rng)
        reference = [np.concatenate([r, v[:, :, None]], axis=2) for r, v in zip(reference, new, strict=True)]
        for got, want in zip(_read(cache), reference, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        width = cache.beams
        if step in (3, 6) and alive > 2:  # two sentences finish and leave the batch
            finished = rng.choice(alive, 2, replace=False)
            kept = compaction_order(np.setdiff1d(np.arange(alive), finished))
            alive -= 2
        else:
            kept = None
        order = np.arange(alive) if kept is None else kept
        # each row continues a random beam of its own sentence; after step 0, three beams each
        rows = np.concatenate([s * width + rng.integers(0, width, beams) for s in order])
        cache.reorder(rows, kept)
        reference = [r[rows] for r in reference]
    assert cache.rows == alive * beams
    assert cache.buffers[0].base is not None  # still a view of the storage of the first step


@pytest.mark.parametrize("sentences", [1, 3])
def test_rows_widened_after_steps_at_one_row_read_their_sentences_history(sentences: int) -> None:
    """A forced prefix decodes at one row per sentence for some steps before the beams branch out."""
    rng = np.random.default_rng(1)
    cache = SelfAttentionCache(2, HEADS, HEAD_DIM, sentences, capacity=6, max_beams=4)
    steps = [_write_step(cache, rng) for _ in range(3)]
    reference = [np.stack([step[i] for step in steps], axis=2) for i in range(len(cache.buffers))]
    with pytest.raises(ValueError, match="another sentence"):
        cache.reorder(np.repeat(np.arange(sentences)[::-1], 4) if sentences > 1 else np.array([0, 0, 1, 0]))
    assert cache.rows == sentences  # a refused reorder changes nothing
    rows = np.repeat(np.arange(sentences), 4)
    cache.reorder(rows)
    assert cache.rows == 4 * sentences
    for got, want in zip(_read(cache), reference, strict=True):
        np.testing.assert_array_equal(got, want[rows])


def test_compaction_moves_only_the_sentences_that_fill_freed_places() -> None:
    kept = np.array([0, 2, 3, 6, 7, 9])
    order = compaction_order(kept)
    assert sorted(order.tolist()) == kept.tolist()
    assert [i for i, s in enumerate(order) if s != i] == [1, 4, 5]  # the three freed places below 6
    np.testing.assert_array_equal(compaction_order(np.arange(4)), np.arange(4))


def test_a_row_may_not_continue_another_sentence_and_the_cache_cannot_overflow(common_step: str) -> None:
    cache = SelfAttentionCache(1, HEADS, HEAD_DIM, sentences=2, capacity=1, max_beams=2)
    with pytest.raises(ValueError, match="another sentence"):
        cache.reorder(np.array([1, 1, 0, 0]))
    with pytest.raises(ValueError, match="max_beams"):
        cache.reorder(np.array([0, 0, 0, 1, 1, 1]))
    wide = SelfAttentionCache(1, HEADS, HEAD_DIM, sentences=2, capacity=2, max_beams=2)
    wide.reorder(np.array([0, 0, 1, 1]))  # two beams each
    with pytest.raises(ValueError, match="another sentence"):  # a beams-only reorder is checked too
        wide.reorder(np.array([0, 2, 2, 3]))
    _write_step(cache, np.random.default_rng(0))
    assert cache.full


def test_compacted_rows_equal_taking_them_and_stay_in_the_same_memory() -> None:
    """Finished sentences' cross keys and values leave the batch without a copy of the rest."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((10, HEADS, 4, HEAD_DIM)).astype(np.float32) for _ in range(2)]
    order = compaction_order(np.array([0, 2, 3, 6, 7, 9]))
    expected = [a[order] for a in arrays]
    compacted = compact_rows(arrays, order)
    for got, want, original in zip(compacted, expected, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, original) and got.flags.c_contiguous


def test_a_reset_cache_serves_another_search_in_the_same_arrays(common_step: str) -> None:
    """A cache kept for the next search (OnnxModel.keep_search) starts again empty at one row per
    sentence, and its rows read what a physically reordered cache holds, as in a fresh one, from the
    very arrays the first search bound."""
    rng = np.random.default_rng(1)
    beams = 4
    cache = SelfAttentionCache(2, HEADS, HEAD_DIM, 1, capacity=8, max_beams=beams)
    seen: list[tuple[int, list[int]]] = []
    for search in range(3):
        if search:
            cache.reset()
        assert (cache.length, cache.rows, cache.step_ids) == (0, 1, None)
        assert not cache.indirection.any()
        reference = [np.zeros((1, HEADS, 0, HEAD_DIM), np.float32) for _ in cache.buffers]
        for step in range(5 + search):  # each search as long as it likes, up to the capacity
            new = _write_step(cache, rng)
            reference = [np.concatenate([r, v[:, :, None]], axis=2) for r, v in zip(reference, new, strict=True)]
            for got, want in zip(_read(cache), reference, strict=True):
                np.testing.assert_array_equal(got, want, err_msg=f"search {search}, step {step}")
            width = cache.beams
            rows = rng.integers(0, width, beams)
            cache.reorder(rows)
            reference = [r[rows] for r in reference]
            if step == 0:
                seen.append((id(cache.indirection), [id(v) for v in cache.values]))
    assert seen[0] == seen[1] == seen[2]  # the beams' arrays and OrtValues made once


def test_a_cache_that_dropped_sentences_cannot_start_again() -> None:
    cache = SelfAttentionCache(1, HEADS, HEAD_DIM, 3, capacity=4, max_beams=2)
    cache.advance()
    cache.reorder(np.array([0, 0, 2, 2]), np.array([0, 2]))  # the middle sentence leaves
    with pytest.raises(ValueError, match="cannot start again"):
        cache.reset()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([7, 8, 9, 14], [1, 2, 3, 5]),  # a compaction: rows from beyond the prefix fill freed places
        ([1, 2, 3], [5, 10, 15]),  # step 0's row per sentence moved to its first beam's
        ([4, 5], [4, 6]),  # one row stays
    ],
)
def test_rows_moved_in_c_are_numpys_fancy_assignment(old: list[int], new: list[int]) -> None:
    """The C module's move of cache rows writes what numpy's gathering assignment writes, up to the
    length given, and leaves every other value as it was."""
    from service.runtime import native

    if native.common_step is None:
        pytest.skip(native.NOT_BUILT)
    storage = np.random.default_rng(3).standard_normal((16, HEADS, 9, HEAD_DIM)).astype(np.float32)
    want = storage.copy()
    want[new, :, :5] = want[old, :, :5]
    assert native.common_step.move_rows(storage, np.array(old), np.array(new), 5)
    np.testing.assert_array_equal(storage, want)


def test_rows_that_move_both_ways_are_left_to_numpy() -> None:
    """Rows moving up and down at once, or new rows out of order, are not moved (False: the cache then
    copies them as numpy does); a row beyond the storage or a length beyond its capacity raise."""
    from service.runtime import native

    if native.common_step is None:
        pytest.skip(native.NOT_BUILT)
    storage = np.random.default_rng(4).standard_normal((8, HEADS, 4, HEAD_DIM)).astype(np.float32)
    before = storage.copy()
    assert not native.common_step.move_rows(storage, np.array([1, 6]), np.array([3, 4]), 2)
    assert not native.common_step.move_rows(storage, np.array([5, 6]), np.array([2, 1]), 2)
    np.testing.assert_array_equal(storage, before)
    with pytest.raises(ValueError, match="out of the storage"):
        native.common_step.move_rows(storage, np.array([8]), np.array([0]), 2)
    with pytest.raises(ValueError, match="length"):
        native.common_step.move_rows(storage, np.array([1]), np.array([0]), 5)


def test_a_pool_hands_out_the_smallest_buffer_that_fits_and_keeps_the_largest() -> None:
    pool = StoragePool(size=2)
    small, middle, large = (np.empty(n, np.float32) for n in (10, 20, 30))
    for buffer in (small, middle, large):
        pool.give(buffer)
    assert len(pool) == 2  # the smallest went
    assert pool.take(15) is middle
    assert pool.take(15) is large
    fresh = pool.take(15)  # none left that fits: a new one
    assert fresh is not small and len(fresh) == 15 and fresh.dtype == np.float32
    pool.give(large)
    assert pool.take(40) is not large and len(pool) == 1
    pool.clear()
    assert len(pool) == 0


def test_a_cache_lays_its_arrays_in_the_storage_it_is_given() -> None:
    floats = storage_floats(2, HEADS, HEAD_DIM, 3, 5, 2)
    storage = np.zeros(floats + 7, np.float32)
    cache = SelfAttentionCache(2, HEADS, HEAD_DIM, 3, capacity=5, max_beams=2, storage=storage)
    assert cache.storage is storage and cache.max_rows == 6
    block = floats // 4  # k0, v0, k1, v1 side by side, each [6 rows, H, 5, K]
    for index, buffer in enumerate(cache.buffers):
        assert buffer.ctypes.data == storage.ctypes.data + index * block * storage.itemsize
        buffer.fill(index + 1)
    assert (storage[:floats].reshape(4, 2, -1)[:, 0] == np.arange(1, 5)[:, None]).all()  # the first 3 rows of 6
    assert not storage[:floats].reshape(4, 2, -1)[:, 1].any() and not storage[floats:].any()
    with pytest.raises(ValueError, match="needs"):
        SelfAttentionCache(2, HEADS, HEAD_DIM, 3, capacity=5, max_beams=2, storage=storage[: floats - 1])
