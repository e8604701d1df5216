"""The exported graphs behind one object: sessions created once, hashes checked at load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sentencepiece as spm

from service.graphs import decoder_spec, encoder_spec
from service.manifest import Manifest, ModelFileError, load_manifest

KVList = list[np.ndarray]  # flat [k0, v0, k1, v1, ...], each [B, H, L, K]


@dataclass(frozen=True)
class EncoderOutput:
    hidden: np.ndarray  # [B, S, D]
    cross: KVList  # per decoder layer, [B, H, S, K]


@dataclass(frozen=True)
class TopStep:
    log_probs: np.ndarray  # [B, DECODER_TOP_K], best first, lower id first on ties
    ids: np.ndarray  # [B, DECODER_TOP_K]
    eos_log_prob: np.ndarray  # [B]
    present: KVList


class OnnxModel:
    def __init__(self, model_dir: Path, intra_op_threads: int = 0, verify: bool = True) -> None:
        self.model_dir = model_dir
        self.manifest: Manifest = load_manifest(model_dir, verify=verify)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        files = self.manifest.files
        self.encoder = self._session(files["encoder"], options)
        self.decoder = self._session(files["decoder"], options)
        self.mlm_head = self._session(files["mlm_head"], options)
        self.tokenizer = spm.SentencePieceProcessor(model_file=str(model_dir / files["tokenizer"]))
        layers = self.manifest.decoder_layers
        self._enc_outputs = list(encoder_spec(layers).outputs)
        self._present_names = [n for n in decoder_spec(layers).outputs if n.startswith("present_")]
        self._past_names = [n for n in decoder_spec(layers).inputs if n.startswith("past_")]
        self._cross_names = [n for n in decoder_spec(layers).inputs if n.startswith("cross_")]

    def _session(self, name: str, options: ort.SessionOptions) -> ort.InferenceSession:
        path = self.model_dir / name
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise ModelFileError(path, f"onnxruntime cannot load it ({exc})") from exc

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> EncoderOutput:
        """ids, mask [B, S] int64 -> hidden states and each layer's cross K/V."""
        hidden, *cross = self.encoder.run(self._enc_outputs, {"input_ids": ids, "attention_mask": mask})
        return EncoderOutput(hidden, cross)

    def empty_past(self, batch: int) -> KVList:
        m = self.manifest
        return [np.zeros((batch, m.n_heads, 0, m.head_dim), np.float32) for _ in self._past_names]

    def decode_step(
        self, last_ids: np.ndarray, mask: np.ndarray, past: KVList, cross: KVList, origin: np.ndarray | None = None
    ) -> tuple[np.ndarray, KVList]:
        """last_ids [B, 1] -> log-probs [B, V] and the present K/V (past rows `origin` plus this step)."""
        feeds = self._feeds(last_ids, mask, past, cross, origin)
        log_probs, *present = self.decoder.run(["log_probs", *self._present_names], feeds)
        return log_probs, present

    def decode_top(
        self, last_ids: np.ndarray, mask: np.ndarray, past: KVList, cross: KVList, origin: np.ndarray | None = None
    ) -> TopStep:
        """One step returning only each row's best DECODER_TOP_K log-probs and ids, and EOS's log-prob."""
        names = ["top_log_probs", "top_ids", "eos_log_prob", *self._present_names]
        feeds = self._feeds(last_ids, mask, past, cross, origin)
        top_log_probs, top_ids, eos_log_prob, *present = self.decoder.run(names, feeds)
        return TopStep(top_log_probs, top_ids, eos_log_prob, present)

    def _feeds(
        self, last_ids: np.ndarray, mask: np.ndarray, past: KVList, cross: KVList, origin: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        if origin is None:  # each row continues its own past row
            origin = np.arange(len(last_ids), dtype=np.int64)
        feeds = {"input_ids": last_ids, "attention_mask": mask, "beam_origin": origin}
        feeds |= dict(zip(self._past_names, past, strict=True))
        feeds |= dict(zip(self._cross_names, cross, strict=True))
        return feeds

    def mlm_logits(self, hidden: np.ndarray) -> np.ndarray:
        (logits,) = self.mlm_head.run(["logits"], {"hidden_states": hidden})
        return np.asarray(logits)
