"""Masking statistics, token buckets and next-sentence pairs."""

from __future__ import annotations

import numpy as np
import torch

from model.batching import BatchStream, SamplingSource, greedy_cuts, mask_tokens, nsp_batch
from service.conventions import CLS_ID, EOS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_IDS

VOCAB = 1000


def test_bert_masking_statistics() -> None:
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(len(SPECIAL_IDS), VOCAB, size=(400, 60)))
    ids[:, -1] = EOS_ID
    ids[::3, -10:] = PAD_ID
    inputs, labels = mask_tokens(ids, rng, VOCAB, prob=0.15)
    maskable = ~torch.isin(ids, torch.tensor(sorted(SPECIAL_IDS)))
    picked = labels != PAD_ID
    assert abs(picked.sum().item() / maskable.sum().item() - 0.15) < 0.01
    n = picked.sum().item()
    as_mask = (inputs[picked] == MASK_ID).sum().item() / n
    kept = (inputs[picked] == ids[picked]).sum().item() / n
    randomised = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02  # a random draw can equal the original: ~0.1% of cases
    assert abs(randomised - 0.1) < 0.02
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(inputs[~picked], ids[~picked])


def test_special_tokens_are_never_masked() -> None:
    rng = np.random.default_rng(1)
    ids = torch.tensor([sorted(SPECIAL_IDS) * 20] * 50)
    inputs, labels = mask_tokens(ids, rng, VOCAB, prob=0.9)
    assert torch.equal(inputs, ids)
    assert (labels == PAD_ID).all()


def test_random_replacements_are_never_special() -> None:
    rng = np.random.default_rng(2)
    ids = torch.full((200, 50), 500)
    inputs, _ = mask_tokens(ids, rng, VOCAB, prob=1.0)
    replaced = inputs[(inputs != MASK_ID) & (inputs != 500)]
    assert replaced.numel() > 0 and (replaced >= len(SPECIAL_IDS)).all()


def test_reserved_ids_are_never_masked_nor_drawn() -> None:
    rng = np.random.default_rng(5)
    ids = torch.from_numpy(rng.integers(0, 40, size=(300, 40)))
    inputs, labels = mask_tokens(ids, rng, 40, prob=1.0, reserved=12)  # 7 control ids and 5 language tags
    assert torch.equal(inputs[ids < 12], ids[ids < 12]) and (labels[ids < 12] == PAD_ID).all()
    replaced = inputs[(ids >= 12) & (inputs != MASK_ID) & (inputs != ids)]
    assert replaced.numel() > 0 and (replaced >= 12).all()


def test_greedy_cuts_respect_the_budget_and_cover_every_example() -> None:
    lengths = np.sort(np.random.default_rng(3).integers(1, 60, size=5000))
    cuts = greedy_cuts(lengths, 1024)
    assert [a for a, _ in cuts][1:] == [b for _, b in cuts][:-1] and cuts[0][0] == 0 and cuts[-1][1] == 5000
    assert all(lengths[b - 1] * (b - a) <= 1024 for a, b in cuts)
    # greedy: one more example would break the budget
    assert all(lengths[b] * (b - a + 1) > 1024 for a, b in cuts[:-1])


def _sources() -> list[SamplingSource]:
    rng = np.random.default_rng(9)
    return [
        SamplingSource(rng.integers(2, 40, size=3000).astype(np.uint16), weight=2.0, views=2),
        SamplingSource(rng.integers(2, 40, size=5000).astype(np.uint16), weight=0.5, views=2),
        SamplingSource(rng.integers(2, 40, size=1000).astype(np.uint16), weight=1.0, views=1),
    ]


def _epoch(stream: BatchStream) -> list[list[int]]:
    return [stream.next().tolist() for _ in range(stream.batches_per_epoch)]


def test_a_stream_is_a_function_of_its_seed() -> None:
    a, b = BatchStream(_sources(), 600, seed=5), BatchStream(_sources(), 600, seed=5)
    assert _epoch(a) == _epoch(b) and _epoch(a) == _epoch(b)  # two epochs each
    assert _epoch(BatchStream(_sources(), 600, seed=6)) != _epoch(BatchStream(_sources(), 600, seed=5))


def test_every_batch_fits_the_budget_and_windows_keep_it() -> None:
    sources = _sources()
    for window in (1 << 20, 1000):  # the whole epoch sorted at once, and in windows
        stream = BatchStream(sources, 600, seed=1, window=window)
        for codes in _epoch(stream):
            lengths = [sources[s].lengths[i] for s, i, _ in map(stream.locate, codes)]
            assert max(lengths) * len(lengths) <= 600


def test_the_sampled_share_of_each_source_follows_its_weight() -> None:
    sources = _sources()
    stream = BatchStream(sources, 600, seed=2)
    counts = np.zeros(3)
    for _ in range(4):  # four epochs
        for codes in _epoch(stream):
            for code in codes:
                counts[stream.locate(code)[0]] += 1
    expected = np.array([len(s.lengths) * s.weight * s.views for s in sources])
    assert np.allclose(counts / counts.sum(), expected / expected.sum(), atol=0.005)
    # both views of an item (its two directions) come with it
    source, item, view = stream.locate(int(stream.next()[0]))
    assert source < 3 and 0 <= view < sources[source].views and item < len(sources[source].lengths)


def test_ranks_see_disjoint_batches_and_resume_exactly() -> None:
    once = [SamplingSource(s.lengths, 1.0, s.views) for s in _sources()]  # each example once per epoch
    ranks = [BatchStream(once, 600, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [[c for batch in _epoch(stream) for c in batch] for stream in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch
    alone = BatchStream(once, 600, seed=5)
    assert len(seen[0]) + len(seen[1]) >= sum(len(b) for b in _epoch(alone)) - max(len(b) for b in _epoch(alone))
    stream = BatchStream(_sources(), 600, seed=5)
    for _ in range(stream.batches_per_epoch + 30):  # into the second epoch
        stream.next()
    resumed = BatchStream(_sources(), 600, seed=5)
    resumed.load_state_dict(stream.state_dict())
    assert [stream.next().tolist() for _ in range(40)] == [resumed.next().tolist() for _ in range(40)]


def test_nsp_pairs_are_labelled_by_image() -> None:
    captions = [[[100 + i, 10 * f] for i in range(50)] for f in range(3)]  # token 100+i names image i
    batch = nsp_batch(captions, 200, np.random.default_rng(4), max_len=32)
    for seq, label in zip(batch["nsp_in"].tolist(), batch["nsp_labels"].tolist(), strict=True):
        assert seq[0] == CLS_ID and seq[3] == SEP_ID
        assert (seq[1] == seq[4]) == bool(label)
    assert 0.35 < batch["nsp_labels"].float().mean().item() < 0.65
