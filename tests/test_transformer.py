"""The network's contracts: positions, causality, padding, and cached decoding."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import ModelConfig
from model.transformer import Transformer, sinusoidal_positions
from service.conventions import EOS_ID, PAD_ID
from tests.conftest import TAG

CFG = ModelConfig(vocab_size=97, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, dropout=0.0)


@pytest.fixture(params=[True, False], ids=["pre-norm", "post-norm"])
def model(request: pytest.FixtureRequest) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG.__dict__, "pre_norm": request.param})
    return Transformer(cfg).eval()


def _ids(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def test_positional_encoding_matches_formula() -> None:
    pe = sinusoidal_positions(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_halves_layout_holds_every_sine_then_every_cosine() -> None:
    interleaved, halves = sinusoidal_positions(50, 16), sinusoidal_positions(50, 16, "halves")
    assert torch.allclose(halves[:, :8], interleaved[:, 0::2], atol=1e-5)
    assert torch.allclose(halves[:, 8:], interleaved[:, 1::2], atol=1e-5)


def test_changing_a_future_target_token_leaves_earlier_outputs_unchanged(model: Transformer) -> None:
    src = _ids([11, 12, 13, 14, EOS_ID])
    tgt = _ids([TAG["fr"], 20, 21, 22, 23, 24])
    changed = tgt.clone()
    changed[0, 4] = 50
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)


def test_padding_does_not_change_outputs(model: Transformer) -> None:
    src, tgt = _ids([11, 12, 13, EOS_ID]), _ids([TAG["en"], 30, 31])
    padded_src = _ids([11, 12, 13, EOS_ID, PAD_ID, PAD_ID, PAD_ID])
    padded_tgt = _ids([TAG["en"], 30, 31, PAD_ID, PAD_ID])
    with torch.no_grad():
        alone = model(src, tgt)
        batched = model(
            torch.cat((padded_src, _ids([40, 41, 42, 43, 44, 45, EOS_ID]))),
            torch.cat((padded_tgt, _ids([TAG["fr"], 50, 51, 52, 53]))),
        )
    assert torch.allclose(alone[0], batched[0, :3], atol=1e-5)


def test_cached_decoding_equals_full_recomputation(model: Transformer) -> None:
    torch.manual_seed(1)
    src = torch.randint(9, CFG.vocab_size, (3, 7))
    src[1, 5:] = PAD_ID
    tgt = torch.randint(9, CFG.vocab_size, (3, 10))
    src_mask = src != PAD_ID
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        cross = model.cross_kv(memory)
        full, _ = model.decode_step(tgt, src_mask, cross)
        past = None
        for step in range(10):
            logits, past = model.decode_step(tgt[:, step : step + 1], src_mask, cross, past)
            assert torch.allclose(logits[:, 0], full[:, step], atol=1e-5), f"step {step}"
    assert past is not None and past[0][0].shape == (3, CFG.n_heads, 10, CFG.head_dim)


def test_embeddings_are_tied_to_the_output_projection(model: Transformer) -> None:
    hidden = torch.randn(2, CFG.d_model)
    assert torch.allclose(model.output_logits(hidden), hidden @ model.embed.weight.t())
    assert sum(p.numel() for p in model.parameters() if p.shape == (CFG.vocab_size, CFG.d_model)) == (
        CFG.vocab_size * CFG.d_model
    )
