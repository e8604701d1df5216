"""What int8 graphs learn from calibration sentences (export/quantize.py): each activation's range,
for constant scales, and its Gram matrix XᵀX, for weight rounding that compensates its errors.

The fp32 graphs of a model directory translate calibration sentences greedily, in every
direction, on copies of the graphs that also return each activation a quantized MatMul reads.
Every row of every sentence counts, source positions and target steps alike; rows of sentences
that have ended do not. The range of an activation is its largest magnitude over those rows.

Sources of one length encode and decode together, so no padding enters a range or a Gram matrix.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from export.quantize import constant_matrix_inputs, untie_output_projection
from service import conventions as cv
from service.graphs import encoder_spec
from service.manifest import Manifest, load_manifest
from service.runtime.kv_cache import SelfAttentionCache
from service.runtime.sessions import step_feeds

log = logging.getLogger("mtserve.export")

# Training pairs from each corpus whose translations give the ranges (model/corpus.py,
# first_pairs_by_language): each corpus's own kind of sentence reaches them.
CALIBRATION_PAIRS = 200


# Rows gathered before they are added to an activation's Gram matrix: one product over many rows
# instead of a K x K sum at every step of a few rows, and at most this many rows held per activation.
GRAM_BLOCK_ROWS = 1024


@dataclass
class Observed:
    """One graph's quantizable activations over the calibration rows, by activation name. The Gram
    matrices are complete once `finish` has run."""

    ranges: dict[str, float] = field(default_factory=dict)  # the largest |x|
    grams: dict[str, np.ndarray] = field(default_factory=dict)  # XᵀX [K, K], float64
    _pending: dict[str, list[np.ndarray]] = field(default_factory=dict)  # rows not yet in grams
    _pending_rows: dict[str, int] = field(default_factory=dict)

    def update(self, names: Sequence[str], values: Sequence[np.ndarray], rows: np.ndarray) -> None:
        """Adds the rows `rows` (of the batch axis) of each activation in `values`."""
        for name, value in zip(names, values, strict=True):
            value = np.asarray(value)
            chosen = value.reshape(len(value), -1, value.shape[-1])[rows].reshape(-1, value.shape[-1])
            if not chosen.size:
                continue
            self.ranges[name] = max(self.ranges.get(name, 0.0), float(np.abs(chosen).max()))
            self._pending.setdefault(name, []).append(chosen.copy())
            self._pending_rows[name] = self._pending_rows.get(name, 0) + len(chosen)
            if self._pending_rows[name] >= GRAM_BLOCK_ROWS:
                self._fold(name)

    def finish(self) -> Observed:
        for name in list(self._pending):
            self._fold(name)
        return self

    def _fold(self, name: str) -> None:
        block = np.concatenate(self._pending.pop(name)).astype(np.float64)  # [rows, K]
        self._pending_rows[name] = 0
        gram = block.T @ block
        if name in self.grams:
            self.grams[name] += gram
        else:
            self.grams[name] = gram


def _with_activations(path: Path, out: Path) -> list[str]:
    """`path`'s graph, written to `out` with each quantizable activation as an output too. Returns
    the activations' names, in the order of those outputs."""
    model = onnx.load(str(path), load_external_data=True)
    untie_output_projection(model)  # the quantizer reads the output projection as a MatMul
    activations = constant_matrix_inputs(model.graph)
    outputs = {o.name for o in model.graph.output}
    for x in activations:
        if x not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    onnx.save(model, str(out))
    return activations


class CalibrationError(ValueError):
    """Calibration text the model cannot calibrate on: names the language."""

    def __init__(self, language: str, problem: str) -> None:
        super().__init__(f"calibration text in {language!r}: {problem}")
        self.language, self.problem = language, problem


def calibration_sources(model_dir: Path, texts: Mapping[str, Sequence[str]]) -> dict[str, list[list[int]]]:
    """Source ids of `texts` (source language -> sentences) as the service would decode them: each
    text through the translator's own preparation (normalization, tokenization, pieces of at most
    the longest source, the model's source suffix), every piece kept. Raises CalibrationError
    naming a language the model does not translate from, or one whose texts give no piece."""
    from service.runtime.translator import Translator

    translator = Translator.load(model_dir, 1, packed=False)
    sources: dict[str, list[list[int]]] = {}
    for language, sentences in texts.items():
        if not translator.languages.has(language) or not translator.languages.targets(language):
            known = sorted({s for s, _ in translator.languages.directions})
            raise CalibrationError(language, f"the model translates from {', '.join(known)}")
        sources[language] = [piece for text in sentences for piece in translator.prepare(text).pieces]
        if not sources[language]:
            raise CalibrationError(language, "no sentence with letters to calibrate on")
    return sources


def observe_activations(model_dir: Path, sources: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, Observed]:
    """Per graph file, the range and Gram matrix of every quantizable activation of `model_dir`'s
    fp32 encoder and decoder step, over greedy translations of `sources` (source language -> token
    ids ending in EOS) into each target the model translates them to."""
    manifest = load_manifest(model_dir, verify=False)
    languages = manifest.model_languages()
    encoder_observed, step_observed = Observed(), Observed()
    with tempfile.TemporaryDirectory(prefix="mtserve-calibration-") as work:
        encoder_path, step_path = Path(work) / "encoder.onnx", Path(work) / "decoder_step.onnx"
        encoder_names = _with_activations(model_dir / manifest.files["encoder"], encoder_path)
        step_names = _with_activations(model_dir / manifest.files["decoder"], step_path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the copies' unused initializers are no news
        encoder = ort.InferenceSession(str(encoder_path), options, providers=["CPUExecutionProvider"])
        step = ort.InferenceSession(str(step_path), options, providers=["CPUExecutionProvider"])
        encoder_outputs = [*encoder_spec(manifest.decoder_layers).outputs]
        for source_language, ids in sources.items():
            for target in languages.targets(source_language):
                started = time.perf_counter()
                tag = languages.tag_ids[target]
                prefix = manifest.source_prefix.get(target, [])
                forced = manifest.decoder_prefix.get(target, [])
                by_length: dict[int, list[list[int]]] = {}
                for sentence in ids:
                    full = [*prefix, *sentence]
                    by_length.setdefault(len(full), []).append(full)
                for group in by_length.values():
                    batch = np.asarray(group, dtype=np.int64)
                    mask = np.ones_like(batch)
                    feeds = {"input_ids": batch, "attention_mask": mask}
                    outputs = encoder.run([*encoder_outputs, *encoder_names], feeds)
                    encoder_observed.update(encoder_names, outputs[len(encoder_outputs) :], np.arange(len(batch)))
                    cross = outputs[1 : len(encoder_outputs)]
                    _decode(step, step_names, step_observed, manifest, mask, cross, tag, forced)
                seconds = time.perf_counter() - started
                log.info("calibration: %d %s sentences translated into %s in %.1f s (%.0f sentences/s)",
                         len(ids), source_language, target, seconds, len(ids) / max(seconds, 1e-9))  # fmt: skip
    return {manifest.files["encoder"]: encoder_observed.finish(), manifest.files["decoder"]: step_observed.finish()}


def _decode(
    session: ort.InferenceSession,
    names: Sequence[str],
    observed: Observed,
    m: Manifest,
    mask: np.ndarray,
    cross: Sequence[np.ndarray],
    tag: int,
    forced: Sequence[int],
) -> None:
    """Greedy decoding of one batch of sources (all of one length), `observed` updated at each step."""
    sentences = len(mask)
    steps = len(forced) + cv.max_target_length(mask.shape[1])
    cache = SelfAttentionCache(m.decoder_layers, m.n_heads, m.head_dim, sentences, steps)
    last = np.full(sentences, tag, dtype=np.int64)
    alive = np.ones(sentences, dtype=bool)
    for position in range(steps):
        feeds = step_feeds(m.decoder_layers, m.vocab_size, ["top_ids"], last[:, None], mask, cache, list(cross))
        binding = feeds.bind(session)
        for name in names:
            binding.bind_output(name)
        session.run_with_iobinding(binding)
        cache.advance()
        values = [value.numpy() for value in binding.get_outputs()[-len(names) :]]
        observed.update(names, values, np.flatnonzero(alive))
        last = (
            feeds.outputs["top_ids"][:, 0].copy()
            if position >= len(forced)
            else np.full(sentences, forced[position], dtype=np.int64)
        )
        alive &= last != m.special_ids.eos
        if not alive.any():
            return
