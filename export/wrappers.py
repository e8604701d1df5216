"""Thin nn.Modules that expose the model's own encode / decode_step / mlm head as ONNX graphs.

They reshape arguments only; the network code is model/transformer.py's.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.transformer import KV, Transformer
from service.conventions import EOS_ID
from service.graphs import DECODER_TOP_K


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
    """One decoding step. Inputs: ids [B, 1], source mask [B, S], beam origin [B], then past and cross K/V.

    Row b continues past row beam_origin[b]: reordering the cache inside the graph saves the
    runtime a copy of every layer's keys and values per step.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.layers = model.cfg.decoder_layers

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, beam_origin: Tensor, *kv: Tensor
    ) -> tuple[Tensor, ...]:
        past = [
            (k.index_select(0, beam_origin), v.index_select(0, beam_origin)) for k, v in _pairs(kv[: 2 * self.layers])
        ]
        cross = _pairs(kv[2 * self.layers :])
        logits, present = self.model.decode_step(input_ids, attention_mask.bool(), cross, past)
        log_probs = logits[:, -1].float().log_softmax(-1)  # [B, V]
        # The search needs only the best few per row: selecting them here (ONNX TopK puts the
        # lower id first on ties) spares copying and partitioning [B, V] in numpy each step.
        top_log_probs, top_ids = log_probs.topk(DECODER_TOP_K, dim=-1)  # [B, DECODER_TOP_K]
        eos_log_prob = log_probs[:, EOS_ID]  # [B]
        return (log_probs, top_log_probs, top_ids, eos_log_prob, *(t for pair in present for t in pair))


class MlmHeadGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.model.mlm_logits(hidden_states)
