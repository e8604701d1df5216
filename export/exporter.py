"""`mtserve export`: checkpoint directory -> ONNX graphs + manifest, validated against PyTorch.

Load, export, check: like CTranslate2's converters and optimum's exporters, the
graphs are run with onnxruntime against the PyTorch model before the export
counts as done, and a report is written beside them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from export.fill_vocab import whole_word_ids, write_fill_vocab
from export.network import Network, network_from_state
from export.wrappers import MlmHeadGraph
from export.writer import Conventions, write_graphs, write_model
from model.artifacts import load_model_dir
from model.config import ModelConfig
from model.tokenizer import check_conventions, tag_id
from model.transformer import Transformer
from service import conventions as cv
from service.graphs import OPSET, GraphSpec, dynamic_axes, mlm_spec
from service.languages import ModelLanguages
from service.manifest import MLM_FILE, Generation, SpecialIds

log = logging.getLogger("mtserve.export")


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


def network_of(model: Transformer) -> Network:
    """The module's weights as the graph builders read them."""
    state = {name: value.detach().float().numpy() for name, value in model.state_dict().items()}
    return network_from_state(model.cfg, state, model.positions.detach().float().numpy())


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


def reference_module(cfg: ModelConfig, state: Mapping[str, np.ndarray], positions: np.ndarray) -> Transformer:
    """The PyTorch network of these weights (model/transformer.py's names) and position table: the
    reference an import's graphs are checked against."""
    module = Transformer(cfg)
    module.load_state_dict({**module.state_dict(), **{k: torch.from_numpy(np.array(v)) for k, v in state.items()}})
    module.positions = torch.from_numpy(np.array(positions, dtype=np.float32))
    return module.eval()


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


def write_mlm_head(model: Transformer, out: Path) -> None:
    """The masked-LM head, traced from PyTorch (a model trained here has one; imports do not)."""
    sample = sample_inputs([[20, 21, 22, cv.EOS_ID], [30, 31, cv.EOS_ID]])
    with torch.no_grad():
        hidden = model.encode(sample.ids, sample.mask.bool())
        _export(MlmHeadGraph(model), (hidden,), mlm_spec(), out / MLM_FILE)


def export_graphs(model: Transformer, out: Path) -> None:
    write_graphs(network_of(model), out)
    if model.cfg.mlm_head:
        write_mlm_head(model, out)


class ExportConfigError(ValueError):
    """The model directory lacks what the manifest must record."""


def model_languages(model: Transformer, sp: spm.SentencePieceProcessor) -> ModelLanguages:
    """The languages, tag ids and directions config.json and the tokenizer declare, checked."""
    cfg = model.cfg
    if not cfg.languages or not cfg.directions:
        raise ExportConfigError("config.json lists no languages or directions; train it with `mtserve train`")
    check_conventions(sp, cfg.languages)
    return ModelLanguages(cfg.languages, {lang: tag_id(sp, lang) for lang in cfg.languages}, cfg.directions)


def export_model(
    checkpoint: Path,
    out: Path,
    training_text: Iterable[str],
    precision: str = "fp32",
    validate_sentences: Sequence[str] = (),
    repetition_guard: bool = True,
    calibration_text: Mapping[str, Sequence[str]] | None = None,
    constant_scales: bool = True,
    compensated_rounding: bool = True,
) -> dict[str, Any]:
    """Export, validate against PyTorch, write the manifest and report. Returns the report.

    `training_text` lists the words fill-mask may propose; `validate_sentences` are
    sentences in the model's first direction's source language whose greedy translations must
    match PyTorch exactly; `calibration_text` (source language -> sentences, none of them held
    out) calibrates int8 graphs: their weights' rounding with `compensated_rounding`, their
    activations' scales with `constant_scales` (write_model).
    """
    model, sp = load_model_dir(checkpoint)
    conventions = mtserve_conventions(model, sp, checkpoint / cv.TOKENIZER_FILE)
    rules = Generation(repetition_guard=repetition_guard, cut_degenerate=repetition_guard)
    conventions = replace(conventions, generation=rules)
    out.mkdir(parents=True, exist_ok=True)
    write_fill_vocab(out, whole_word_ids(sp, training_text))
    probe = [[*ids, cv.EOS_ID] for ids in sp.encode(list(validate_sentences[:16]) or ["A b c.", "D e f g."])]
    sources = [[*ids, cv.EOS_ID] for ids in sp.encode(list(validate_sentences))]
    report = export_network(
        model, conventions, out, precision, probe, sources, None,
        calibration_text, constant_scales, compensated_rounding,
    )  # fmt: skip
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
    calibration_text: Mapping[str, Sequence[str]] | None = None,
    constant_scales: bool = True,
    compensated_rounding: bool = True,
) -> dict[str, Any]:
    """Graphs, tokenizer files and manifest for `model` in `out`, validated against PyTorch.

    `probe` are source ids whose logits must match; `sources` are source ids whose greedy
    translations (in the first direction) must be identical; `calibration_text`, `constant_scales`
    and `compensated_rounding` as write_model takes them. Returns the report it writes."""
    from export.validate import pytorch_check  # it reads this module's sample inputs

    check = pytorch_check(model, probe, sources)
    mlm = (lambda directory: write_mlm_head(model, directory)) if model.cfg.mlm_head else None
    return write_model(
        network_of(model), conventions, out, precision, check, mlm, extra_report,
        calibration_text, constant_scales, compensated_rounding,
    )  # fmt: skip
