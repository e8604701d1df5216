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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import sentencepiece as spm
import torch

from export.decoder_graph import build_decoder_step
from export.encoder_graph import build_encoder
from export.fill_vocab import whole_word_ids, write_fill_vocab
from export.quantize import quantize_int8
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
    Manifest,
    SpecialIds,
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


def sample_inputs(sentences: Sequence[Sequence[int]]) -> SampleInputs:
    width = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), width), cv.PAD_ID, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = torch.as_tensor(s)
    return SampleInputs(ids, (ids != cv.PAD_ID).long())


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
    sample = sample_inputs([[20, 21, 22, cv.EOS_ID], [30, 31, cv.EOS_ID]])
    # Encoder and decoder step are written out rather than traced: see export/graph_builder.py.
    onnx.save(build_encoder(model), str(out / ENCODER_FILE))
    onnx.save(build_decoder_step(model), str(out / DECODER_FILE))
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


def write_manifest(out: Path, model: Transformer, languages: ModelLanguages, precision: str) -> Manifest:
    cfg = model.cfg
    files = {
        "encoder": ENCODER_FILE,
        "decoder": DECODER_FILE,
        "mlm_head": MLM_FILE,
        "weights": WEIGHTS_FILE,
        "fill_vocab": FILL_VOCAB_FILE,
        "tokenizer": cv.TOKENIZER_FILE,
    }
    manifest = Manifest(
        opset=OPSET,
        precision=precision,
        files=files,
        sha256={name: sha256_file(out / name) for name in files.values()},
        special_ids=SpecialIds(
            pad=cv.PAD_ID,
            unk=cv.UNK_ID,
            bos=cv.BOS_ID,
            eos=cv.EOS_ID,
            mask=cv.MASK_ID,
            cls=cv.CLS_ID,
            sep=cv.SEP_ID,
            language_tags=dict(languages.tag_ids),
        ),
        languages=list(languages.codes),
        directions=[(s, t) for s, t in languages.directions],
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        decoder_layers=cfg.decoder_layers,
        head_dim=cfg.head_dim,
    )
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def export_model(
    checkpoint: Path,
    out: Path,
    training_text: Iterable[str],
    precision: str = "fp32",
    validate_sentences: Sequence[str] = (),
) -> dict[str, Any]:
    """Export, validate against PyTorch, write the manifest and report. Returns the report.

    `training_text` lists the words fill-mask may propose; `validate_sentences` are
    sentences in the model's first direction's source language whose greedy translations must
    match PyTorch exactly.
    """
    from export.validate import validate_export

    model, sp = load_model_dir(checkpoint)
    languages = model_languages(model, sp)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_graphs(model, out)
    if out.resolve() != checkpoint.resolve():
        shutil.copyfile(checkpoint / cv.TOKENIZER_FILE, out / cv.TOKENIZER_FILE)
    write_fill_vocab(out, whole_word_ids(sp, training_text))
    report: dict[str, Any] = {"precision": precision, "export_seconds": 0.0}
    report["sharing"] = share_weights(out, GRAPH_FILES, model.cfg.vocab_size)
    write_manifest(out, model, languages, "fp32")
    report["fp32"] = validate_export(model, sp, out, validate_sentences, strict=True)
    if precision == "int8":
        export_graphs(model, out)  # afresh: the quantizer reads plain fp32 initializers
        report["int8_matmuls"] = quantize_int8(out, GRAPH_FILES)
        report["sharing"] = share_weights(out, GRAPH_FILES, model.cfg.vocab_size)
        write_manifest(out, model, languages, "int8")
        report["int8"] = validate_export(model, sp, out, validate_sentences, strict=False)
    report["export_seconds"] = round(time.perf_counter() - started, 1)
    report["sizes_bytes"] = {name: (out / name).stat().st_size for name in (*GRAPH_FILES, WEIGHTS_FILE)}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info("exported %s to %s", checkpoint, out)
    return report
