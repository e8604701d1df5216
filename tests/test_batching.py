"""Masking statistics, token buckets and next-sentence pairs."""

from __future__ import annotations

import numpy as np
import torch

from model.batching import BatchStream, mask_tokens, nsp_batch, token_buckets
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


def test_token_buckets_respect_the_budget_and_cover_every_example() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, size=5000).tolist()
    batches = token_buckets(lengths, 1024, rng)
    assert sorted(i for b in batches for i in b) == list(range(5000))
    assert all(max(lengths[i] for i in b) * len(b) <= 1024 for b in batches)


def test_batch_stream_shards_disjointly_and_resumes_exactly() -> None:
    lengths = list(range(1, 200))
    ranks = [BatchStream(lengths, 300, seed=5, rank=r, world_size=2) for r in range(2)]
    first = [set(ranks[r].next()) for r in range(2)]
    assert not first[0] & first[1]
    stream = BatchStream(lengths, 300, seed=5)
    for _ in range(30):
        stream.next()
    resumed = BatchStream(lengths, 300, seed=5)
    resumed.load_state_dict(stream.state_dict())
    assert [stream.next() for _ in range(40)] == [resumed.next() for _ in range(40)]


def test_nsp_pairs_are_labelled_by_image() -> None:
    captions = [[[100 + i, 10 * f] for i in range(50)] for f in range(3)]  # token 100+i names image i
    batch = nsp_batch(captions, 200, np.random.default_rng(4), max_len=32)
    for seq, label in zip(batch["nsp_in"].tolist(), batch["nsp_labels"].tolist(), strict=True):
        assert seq[0] == CLS_ID and seq[3] == SEP_ID
        assert (seq[1] == seq[4]) == bool(label)
    assert 0.35 < batch["nsp_labels"].float().mean().item() < 0.65
