"""A model directory from a network's weights: graphs, shared weights, int8 where asked,
tokenizer files, manifest and report. Torch-free, so that importing CTranslate2 models and Argos
packages needs no torch; export/exporter.py adds what a trained PyTorch model needs (its masked-LM
head, the check against PyTorch itself).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.calibrate import calibration_sources, observe_activations
from export.decoder_graph import build_decoder_step
from export.encoder_graph import build_encoder
from export.network import Network
from export.quantize import ROW_QUANTIZE_OPSET, WEIGHT_BITS, quantize_int8
from export.shared_weights import WEIGHTS_FILE, share_weights
from model.config import ModelConfig
from service.graphs import OPSET
from service.languages import ModelLanguages
from service.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    FILL_VOCAB_FILE,
    MANIFEST_FILE,
    MLM_FILE,
    Generation,
    Manifest,
    SpecialIds,
    TokenizerSpec,
    sha256_file,
)

REPORT_FILE = "export_report.json"
GRAPH_FILES = (ENCODER_FILE, DECODER_FILE, MLM_FILE)
LOGIT_TOLERANCE = 1e-4

# Checks the graphs written in a directory: (directory, strict) -> what the report records of it.
# strict (fp32): a disagreement raises ExportValidationError; int8 graphs are only measured.
Check = Callable[[Path, bool], dict[str, Any]]


class ExportValidationError(RuntimeError):
    """onnxruntime disagrees with the reference beyond tolerance, or gives no usable output."""

    def __init__(self, graph: str, output: str, detail: str) -> None:
        super().__init__(f"{graph}: output {output!r} {detail}")
        self.graph, self.output = graph, output

    @classmethod
    def logits(cls, graph: str, output: str, max_abs_diff: float) -> ExportValidationError:
        return cls(graph, output, f"differs from PyTorch by max abs {max_abs_diff:.3g} (tolerance {LOGIT_TOLERANCE:g})")


@dataclass(frozen=True)
class Conventions:
    """What the runtime needs besides the graphs: ids, tokenizer files, how decoding starts."""

    languages: ModelLanguages
    special_ids: SpecialIds
    tokenizer_files: dict[str, Path]  # manifest role -> file to copy beside the graphs
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    decoder_start: dict[str, int] | None = None
    source_prefix: dict[str, list[int]] = field(default_factory=dict)
    decoder_prefix: dict[str, list[int]] = field(default_factory=dict)
    source_eos: bool = True
    generation: Generation = field(default_factory=Generation)
    origin: str = "mtserve"


def graph_files(cfg: ModelConfig) -> tuple[str, ...]:
    return GRAPH_FILES if cfg.mlm_head else (ENCODER_FILE, DECODER_FILE)


def write_graphs(net: Network, out: Path) -> None:
    # Encoder and decoder step are written out rather than traced: see export/graph_builder.py.
    onnx.save(build_encoder(net), str(out / ENCODER_FILE))
    onnx.save(build_decoder_step(net), str(out / DECODER_FILE))


def write_manifest(out: Path, cfg: ModelConfig, conventions: Conventions, precision: str) -> Manifest:
    files = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "weights": WEIGHTS_FILE}
    if cfg.mlm_head:
        files |= {"mlm_head": MLM_FILE, "fill_vocab": FILL_VOCAB_FILE}
    files |= {role: path.name for role, path in conventions.tokenizer_files.items()}
    languages = conventions.languages
    manifest = Manifest(
        opset=ROW_QUANTIZE_OPSET if precision == "int8" else OPSET,  # export/quantize.py raises it
        precision=precision,
        int8_weight_bits=WEIGHT_BITS if precision == "int8" else Manifest.model_fields["int8_weight_bits"].default,
        files=files,
        sha256={name: sha256_file(out / name) for name in files.values()},
        special_ids=conventions.special_ids,
        languages=list(languages.codes),
        directions=[(s, t) for s, t in languages.directions],
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        decoder_layers=cfg.decoder_layers,
        head_dim=cfg.head_dim,
        origin=conventions.origin,
        tokenizer=conventions.tokenizer,
        decoder_start=conventions.decoder_start,
        source_prefix=conventions.source_prefix,
        decoder_prefix=conventions.decoder_prefix,
        source_eos=conventions.source_eos,
        generation=conventions.generation,
    )
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def write_model(
    net: Network,
    conventions: Conventions,
    out: Path,
    precision: str,
    check: Check,
    extra_graphs: Callable[[Path], None] | None = None,
    extra_report: dict[str, Any] | None = None,
    calibration_text: Mapping[str, Sequence[str]] | None = None,
    constant_scales: bool = True,
    compensated_rounding: bool = True,
) -> dict[str, Any]:
    """Graphs, tokenizer files and manifest for `net` in `out`, each precision checked by `check`;
    `extra_graphs` writes graphs beyond the encoder and decoder step. At int8, `calibration_text`
    (source language -> sentences, decoded as the service decodes them) calibrates the graphs
    (export/calibrate.py): with `compensated_rounding` the weights are rounded to compensate their
    errors on its activations, and with `constant_scales` the activations get constant scales.
    Otherwise the weights take their nearest codes and the activations are scaled per row. Returns
    the report it writes."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    graphs = graph_files(net.cfg)

    def graphs_written() -> None:
        write_graphs(net, out)
        if extra_graphs is not None:
            extra_graphs(out)

    graphs_written()
    for path in conventions.tokenizer_files.values():
        if path.resolve() != (out / path.name).resolve():
            shutil.copyfile(path, out / path.name)
    report: dict[str, Any] = {"precision": precision, "export_seconds": 0.0, **(extra_report or {})}
    report["sharing"] = share_weights(out, graphs, net.cfg.vocab_size)
    write_manifest(out, net.cfg, conventions, "fp32")
    report["fp32"] = check(out, True)
    if precision == "int8":
        used = constant_scales or compensated_rounding  # calibration text neither uses is not decoded
        calibration = calibration_sources(out, calibration_text) if calibration_text and used else None
        graphs_written()  # afresh: the quantizer and the calibration read plain fp32 initializers
        observed = observe_activations(out, calibration) if calibration else {}
        ranges = {name: seen.ranges for name, seen in observed.items()} if constant_scales else {}
        grams = {name: seen.grams for name, seen in observed.items()} if compensated_rounding else {}
        report["int8_matmuls"] = quantize_int8(out, graphs, ranges, grams)
        report["int8_activations"] = "constant scales from calibration" if ranges else "scaled per row"
        report["int8_weights"] = "rounding compensated on calibration" if grams else "nearest codes"
        if calibration:
            report["calibration_sentences"] = {lang: len(ids) for lang, ids in calibration.items()}
        report["sharing"] = share_weights(out, graphs, net.cfg.vocab_size)
        write_manifest(out, net.cfg, conventions, "int8")
        report["int8"] = check(out, False)
    report["export_seconds"] = round(time.perf_counter() - started, 1)
    report["sizes_bytes"] = {name: (out / name).stat().st_size for name in (*graphs, WEIGHTS_FILE)}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def runtime_check(sources: Sequence[Sequence[int]]) -> Check:
    """The check where no reference network can run (no torch): the graphs load in the runtime,
    their log-probabilities are finite where they are not barred, and greedy decoding of `sources`
    (ids ending in EOS, in the model's first direction) ends within its limit with output."""

    def check(out: Path, strict: bool) -> dict[str, Any]:
        from service.runtime.beam import DecodeOptions, beam_search
        from service.runtime.sessions import OnnxModel

        onnx_model = OnnxModel(out, verify=False, packed=False)
        target = onnx_model.languages.directions[0][1]
        tag = onnx_model.languages.tag_ids[target]
        prefixed = [[*onnx_model.manifest.source_prefix.get(target, []), *s] for s in sources]
        forced = onnx_model.manifest.decoder_prefix.get(target, [])
        options = DecodeOptions(beam_size=1, repetition_guard=False, cut_degenerate=False)
        hyps = beam_search(onnx_model, prefixed, [tag] * len(prefixed), options, [forced] * len(prefixed))
        scores = np.array([h[0].log_prob for h in hyps])
        empty = sum(not h[0].tokens for h in hyps)
        if strict and (not np.isfinite(scores).all() or empty == len(hyps)):
            raise ExportValidationError(
                "decoder_step", "log_probs", f"gives no usable translation ({empty} of {len(hyps)} empty)"
            )
        return {"reference": None, "greedy": {"sentences": len(hyps), "empty": empty}}

    return check
