"""Thin nn.Modules that expose the model's own encode / decode_step / mlm head as ONNX graphs.

They reshape arguments only; the network code is model/transformer.py's.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.transformer import KV, Transformer


def _pairs(flat: tuple[Tensor, ...]) -> list[KV]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class EncoderGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        hidden = self.model.encode(input_ids, attention_mask.bool())
        return (hidden, *(t for kv in self.model.cross_kv(hidden) for t in kv))


class DecoderStepGraph(nn.Module):
    """One decoding step. Inputs: ids [B, 1], source mask [B, S], then past K/V and cross K/V per layer."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.layers = model.cfg.decoder_layers

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *kv: Tensor) -> tuple[Tensor, ...]:
        past, cross = _pairs(kv[: 2 * self.layers]), _pairs(kv[2 * self.layers :])
        logits, present = self.model.decode_step(input_ids, attention_mask.bool(), cross, past)
        log_probs = logits[:, -1].float().log_softmax(-1)  # [B, V]
        return (log_probs, *(t for pair in present for t in pair))


class MlmHeadGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.model.mlm_logits(hidden_states)
