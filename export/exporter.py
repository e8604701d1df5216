"""`mtserve export`: checkpoint directory -> ONNX graphs + manifest, validated against PyTorch.

Load, export, check: like CTranslate2's converters and optimum's exporters, the
graphs are run with onnxruntime against the PyTorch model before the export
counts as done, and a report is written beside them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import sentencepiece as spm
import torch

from export.decoder_graph import build_decoder_step
from export.encoder_graph import build_encoder
from export.fill_vocab import whole_word_ids, write_fill_vocab
from export.quantize import WEIGHT_BITS, quantize_int8
from export.shared_weights import WEIGHTS_FILE, share_weights
from export.wrappers import MlmHeadGraph
from model.artifacts import load_model_dir
from model.tokenizer import check_conventions, tag_id
from model.transformer import Transformer
from service import conventions as cv
from service.graphs import OPSET, GraphSpec, dynamic_axes, mlm_spec
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

log = logging.getLogger("mtserve.export")
REPORT_FILE = "export_report.json"
GRAPH_FILES = (ENCODER_FILE, DECODER_FILE, MLM_FILE)
LOGIT_TOLERANCE = 1e-4


class ExportValidationError(RuntimeError):
    """onnxruntime disagrees with PyTorch beyond tolerance."""

    def __init__(self, graph: str, output: str, detail: str) -> None:
        super().__init__(f"{graph}: output {output!r} {detail}")
        self.graph, self.output = graph, output

    @classmethod
    def logits(cls, graph: str, output: str, max_abs_diff: float) -> ExportValidationError:
        return cls(graph, output, f"differs from PyTorch by max abs {max_abs_diff:.3g} (tolerance {LOGIT_TOLERANCE:g})")


@dataclass(frozen=True)
class SampleInputs:
    ids: torch.Tensor  # [B, S]
    mask: torch.Tensor  # [B, S] int64, 1 on real tokens


def sample_inputs(sentences: Sequence[Sequence[int]], pad_id: int = cv.PAD_ID) -> SampleInputs:
    width = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sentences), width), dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return SampleInputs(ids, mask)


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


def mtserve_conventions(model: Transformer, sp: spm.SentencePieceProcessor, tokenizer: Path) -> Conventions:
    languages = model_languages(model, sp)
    special = SpecialIds(
        pad=cv.PAD_ID,
        unk=cv.UNK_ID,
        bos=cv.BOS_ID,
        eos=cv.EOS_ID,
        mask=cv.MASK_ID,
        cls=cv.CLS_ID,
        sep=cv.SEP_ID,
        language_tags=dict(languages.tag_ids),
    )
    return Conventions(languages, special, {"tokenizer": tokenizer})


def graph_files(model: Transformer) -> tuple[str, ...]:
    return GRAPH_FILES if model.cfg.mlm_head else (ENCODER_FILE, DECODER_FILE)


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path) -> None:
    # The exporter restores the wrapper's training flag afterwards, recursively: keep it in eval.
    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        input_names=list(spec.inputs),
        output_names=list(spec.outputs),
        dynamic_axes=dynamic_axes(spec),
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )


def export_graphs(model: Transformer, out: Path) -> None:
    # Encoder and decoder step are written out rather than traced: see export/graph_builder.py.
    onnx.save(build_encoder(model), str(out / ENCODER_FILE))
    onnx.save(build_decoder_step(model), str(out / DECODER_FILE))
    if not model.cfg.mlm_head:
        return
    sample = sample_inputs([[20, 21, 22, cv.EOS_ID], [30, 31, cv.EOS_ID]])
    with torch.no_grad():
        hidden = model.encode(sample.ids, sample.mask.bool())
        _export(MlmHeadGraph(model), (hidden,), mlm_spec(), out / MLM_FILE)


class ExportConfigError(ValueError):
    """The model directory lacks what the manifest must record."""


def model_languages(model: Transformer, sp: spm.SentencePieceProcessor) -> ModelLanguages:
    """The languages, tag ids and directions config.json and the tokenizer declare, checked."""
    cfg = model.cfg
    if not cfg.languages or not cfg.directions:
        raise ExportConfigError("config.json lists no languages or directions; train it with `mtserve train`")
    check_conventions(sp, cfg.languages)
    return ModelLanguages(cfg.languages, {lang: tag_id(sp, lang) for lang in cfg.languages}, cfg.directions)


def write_manifest(out: Path, model: Transformer, conventions: Conventions, precision: str) -> Manifest:
    cfg = model.cfg
    files = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "weights": WEIGHTS_FILE}
    if cfg.mlm_head:
        files |= {"mlm_head": MLM_FILE, "fill_vocab": FILL_VOCAB_FILE}
    files |= {role: path.name for role, path in conventions.tokenizer_files.items()}
    languages = conventions.languages
    manifest = Manifest(
        opset=OPSET,
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


def export_model(
    checkpoint: Path,
    out: Path,
    training_text: Iterable[str],
    precision: str = "fp32",
    validate_sentences: Sequence[str] = (),
    repetition_guard: bool = True,
) -> dict[str, Any]:
    """Export, validate against PyTorch, write the manifest and report. Returns the report.

    `training_text` lists the words fill-mask may propose; `validate_sentences` are
    sentences in the model's first direction's source language whose greedy translations must
    match PyTorch exactly.
    """
    model, sp = load_model_dir(checkpoint)
    conventions = mtserve_conventions(model, sp, checkpoint / cv.TOKENIZER_FILE)
    rules = Generation(repetition_guard=repetition_guard, cut_degenerate=repetition_guard)
    conventions = replace(conventions, generation=rules)
    out.mkdir(parents=True, exist_ok=True)
    write_fill_vocab(out, whole_word_ids(sp, training_text))
    probe = [[*ids, cv.EOS_ID] for ids in sp.encode(list(validate_sentences[:16]) or ["A b c.", "D e f g."])]
    sources = [[*ids, cv.EOS_ID] for ids in sp.encode(list(validate_sentences))]
    report = export_network(model, conventions, out, precision, probe, sources)
    log.info("exported %s to %s", checkpoint, out)
    return report


def export_network(
    model: Transformer,
    conventions: Conventions,
    out: Path,
    precision: str,
    probe: Sequence[Sequence[int]],
    sources: Sequence[Sequence[int]],
    extra_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Graphs, tokenizer files and manifest for `model` in `out`, validated against PyTorch.

    `probe` are source ids whose logits must match; `sources` are source ids whose greedy
    translations (in the first direction) must be identical. Returns the report it writes."""
    from export.validate import validate_export

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    graphs = graph_files(model)
    export_graphs(model, out)
    for path in conventions.tokenizer_files.values():
        if path.resolve() != (out / path.name).resolve():
            shutil.copyfile(path, out / path.name)
    report: dict[str, Any] = {"precision": precision, "export_seconds": 0.0, **(extra_report or {})}
    report["sharing"] = share_weights(out, graphs, model.cfg.vocab_size)
    write_manifest(out, model, conventions, "fp32")
    report["fp32"] = validate_export(model, out, probe, sources, strict=True)
    if precision == "int8":
        export_graphs(model, out)  # afresh: the quantizer reads plain fp32 initializers
        report["int8_matmuls"] = quantize_int8(out, graphs)
        report["sharing"] = share_weights(out, graphs, model.cfg.vocab_size)
        write_manifest(out, model, conventions, "int8")
        report["int8"] = validate_export(model, out, probe, sources, strict=False)
    report["export_seconds"] = round(time.perf_counter() - started, 1)
    report["sizes_bytes"] = {name: (out / name).stat().st_size for name in (*graphs, WEIGHTS_FILE)}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
