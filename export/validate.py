"""Check exported graphs against the PyTorch model they came from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.exporter import sample_inputs
from export.writer import LOGIT_TOLERANCE, Check, ExportValidationError
from model.beam import beam_search as torch_beam_search
from model.transformer import Transformer
from service.runtime.beam import DecodeOptions, beam_search
from service.runtime.sessions import OnnxModel

DECODE_STEPS = 6


def _max_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _real(values: np.ndarray | torch.Tensor, mask: np.ndarray, source_axis: int) -> np.ndarray:
    """`values` at real source positions only: what padding holds is no output of the model."""
    moved = np.moveaxis(np.asarray(values), (0, source_axis), (0, 1))  # [B, S, ...]
    return moved[mask.astype(bool)]


def _finite_diff(got: np.ndarray, ref: torch.Tensor) -> float:
    """Max difference where the reference is finite; both must agree on which ids are -inf."""
    ref_np = ref.numpy()
    finite = np.isfinite(ref_np)
    if not (np.isfinite(got) == finite).all():
        return float("inf")
    return _max_diff(got[finite], ref_np[finite])


def compare_logits(model: Transformer, onnx: OnnxModel, sources: Sequence[Sequence[int]]) -> dict[str, float]:
    """Max |ORT − PyTorch| per output: encoder, MLM head, and DECODE_STEPS cached decoder steps."""
    sample = sample_inputs(sources, model.cfg.pad_id)
    diffs: dict[str, float] = {}
    with torch.no_grad():
        hidden = model.encode(sample.ids, sample.mask.bool())
        cross = model.cross_kv(hidden)
        enc = onnx.encode(sample.ids.numpy(), sample.mask.numpy())
        real = sample.mask.numpy()
        diffs["encoder/hidden_states"] = _max_diff(_real(enc.hidden, real, 1), _real(hidden, real, 1))
        diffs["encoder/cross"] = max(
            _max_diff(_real(o, real, 2), _real(t, real, 2))
            for o, t in zip(enc.cross, [x for kv in cross for x in kv], strict=True)
        )
        if model.cfg.mlm_head:
            mlm = onnx.mlm_logits(enc.hidden), model.mlm_logits(hidden)
            diffs["mlm_head/logits"] = _max_diff(_real(mlm[0], real, 1), _real(mlm[1], real, 1))
        tag_ids = list(onnx.languages.tag_ids.values())
        tags = [tag_ids[i % len(tag_ids)] for i in range(len(sources))]
        ids = torch.tensor(tags)[:, None]
        past_t = None
        cache = onnx.new_cache(len(sources), DECODE_STEPS)
        worst = 0.0
        for _ in range(DECODE_STEPS):  # step 0 runs with an empty past
            logits, past_t = model.decode_step(ids, sample.mask.bool(), cross, past_t)
            ref = logits[:, -1].float().log_softmax(-1)
            ref[:, list(model.cfg.never_generate)] = float("-inf")
            got = onnx.decode_step(ids.numpy(), sample.mask.numpy(), cache, enc.cross)
            worst = max(worst, _finite_diff(got, ref))
            ids = ref.argmax(-1, keepdim=True)
        diffs["decoder_step/log_probs"] = worst
    return diffs


def validate_export(
    model: Transformer,
    out: Path,
    probe: Sequence[Sequence[int]],
    sources: Sequence[Sequence[int]],
    strict: bool,
) -> dict[str, Any]:
    """Logit parity on `probe` (fp32: fail beyond LOGIT_TOLERANCE) and greedy parity on `sources`
    (ids ending in EOS), translated in the model's first direction."""
    model.eval()
    onnx = OnnxModel(out, verify=False, packed=False)
    diffs = compare_logits(model, onnx, probe)
    if strict:
        for name, diff in diffs.items():
            if diff > LOGIT_TOLERANCE:
                graph, output = name.split("/")
                raise ExportValidationError.logits(graph, output, diff)
    report: dict[str, Any] = {"max_abs_diff": diffs}
    if sources:
        target = onnx.languages.directions[0][1]
        tag = onnx.languages.tag_ids[target]
        prefixed = [[*onnx.manifest.source_prefix.get(target, []), *s] for s in sources]
        forced = onnx.manifest.decoder_prefix.get(target, [])
        with torch.no_grad():
            reference = [h[0].tokens for h in torch_beam_search(model, prefixed, tag, beam_size=1, prefix=forced)]
        options = DecodeOptions(beam_size=1, repetition_guard=False, cut_degenerate=False)  # the reference has no guard
        tags, prefixes = [tag] * len(prefixed), [forced] * len(prefixed)
        runtime = [h[0].tokens for h in beam_search(onnx, prefixed, tags, options, prefixes)]
        mismatches = [i for i, (a, b) in enumerate(zip(reference, runtime, strict=True)) if a != b]
        report["greedy"] = {"sentences": len(sources), "identical": len(sources) - len(mismatches)}
        if strict and mismatches:
            raise ExportValidationError(
                "decoder_step",
                "log_probs",
                f"gives different greedy tokens from PyTorch on {len(mismatches)} of {len(sources)} sentences "
                f"(first: sentence {mismatches[0]})",
            )
    return report


def pytorch_check(model: Transformer, probe: Sequence[Sequence[int]], sources: Sequence[Sequence[int]]) -> Check:
    """The writer's check of each precision's graphs against `model` (validate_export)."""

    def check(out: Path, strict: bool) -> dict[str, Any]:
        return validate_export(model, out, probe, sources, strict)

    return check
