"""The MLM head as a thin nn.Module for tracing (encoder and decoder step are written out
directly: export/graph_builder.py).

It reshapes nothing; the network code is model/transformer.py's.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.transformer import Transformer


class MlmHeadGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.model.mlm_logits(hidden_states)
