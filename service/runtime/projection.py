"""A shortlisted step's output projection on the host (int8, and fp32 for small batches).

A shortlisted step's projection reads its batch's union of columns from an input, and onnxruntime
packs a weight that comes as an input at every run: for a sentence alone the packing costs more
than the product (docs/BENCHMARKS.md). For batches within the CPU's bound (HOST_SENTENCES) the
runtime instead binds
the step a narrow union (its first NARROW_COLUMNS columns, which hold EOS's position, so that the
graph's own projection costs next to nothing), reads the step's quantized rows (PROJECTION_CODES
and PROJECTION_ROW_SCALE, what its MatMulIntegerToFloat reads; export/shortlist.py adds them as
outputs), and multiplies them by the batch's columns, packed once a batch (_common_step.c, `top_k`
with a projection), a tile of rows at a time into a scratch of one tile (logits_scratch). The logits
are the graph's, bit for bit; each sentence's bias, the log-softmax, the top-k and EOS's log-prob
follow in the same pass. The log-softmax is the host's own, within a few units in the last place of
onnxruntime's, so where the bound leaves a large batch the graph's projection, a sentence alone and
the same sentence in it may differ where two candidates tie to the last bits.

An fp32 step gives its projection's input rows (PROJECTION_ROWS) and reads the union's rows of the
output layer [U, D]; the host packs them once a batch and sums each logit in runs of 128 of the depth,
as onnxruntime's fp32 Gemm does, so those logits are the graph's to the bit too.

MTSERVE_HOST_PROJECTION=off keeps the graph's projection for every batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from service.runtime import native
from service.runtime.shortlist import OUTPUT_BIAS, OUTPUT_SCALE, OUTPUT_VOCAB, OUTPUT_WEIGHT, BatchVocab

PROJECTION_CODES = "projection_codes"  # [rows, D] uint8: the projection's input, quantized per row
PROJECTION_ROW_SCALE = "projection_row_scale"  # [rows, 1] float32: each row's scale
PROJECTION_OUTPUTS = (PROJECTION_CODES, PROJECTION_ROW_SCALE)
PROJECTION_ROWS = "projection_rows"  # [rows, D] float32: an fp32 step's projection input
PROJECTION_ZERO_POINT = 128  # the codes' zero point, as _projection.h takes them
# The most sentences a batch may have for its projection to run here, by the host's kernel (None:
# any): where the host's product, log-softmax and top-k in one pass still beat the graph's with its
# packing (docs/BENCHMARKS.md). The plain C kernel never does.
HOST_SENTENCES: dict[int, int | None] = {4: None, 3: None, 2: 8, 1: 2}  # AMX, AVX-512 VNNI, AVX-VNNI, AVX2
# The same for an fp32 step, whose product the host runs with AVX-512 (on CPUs of kernel 3 and 4) and
# otherwise in plain C, which never pays. Its product is near the cores' peak either way, so beyond a
# few sentences onnxruntime's second thread beats the host's one.
FLOAT_HOST_SENTENCES: dict[int, int | None] = {4: 8, 3: 8}
NARROW_COLUMNS = 16  # the union's columns the graph's own projection spans meanwhile: one top-k block
GROUP = 16  # columns the host packs together (_projection.h): a union is padded to whole groups
DEPTH = 4  # bytes of a column packed together (_projection.h): the codes' width is a multiple


def logits_scratch(rows: int, columns: int, floating: bool = False) -> np.ndarray:
    """The host's scratch for the logits of `rows` rows over a union of `columns`: one tile of rows
    (_common_step.c makes and ranks PROJECTED_TILE rows at a time, FLOAT_PROJECTED_TILE for an fp32
    step, whose packed rows outgrow the caches that an int8 step's stay in)."""
    assert native.common_step is not None
    tile = native.common_step.FLOAT_PROJECTED_TILE if floating else native.common_step.PROJECTED_TILE
    return np.empty((min(rows, tile), padded_width(columns)), np.float32)


def padded_width(columns: int) -> int:
    """A union of `columns` padded to whole packed groups: the width of the host's logits."""
    return -(-columns // GROUP) * GROUP


def host_projection_enabled(setting: str | None = None) -> bool:
    """MTSERVE_HOST_PROJECTION: "off" keeps the graph's projection; anything else lets a model whose
    step gives its projection's input rows take the host's within the CPU's bound."""
    value = os.environ.get("MTSERVE_HOST_PROJECTION", "on") if setting is None else setting
    return value.strip().lower() != "off"


@dataclass(frozen=True)
class HostProjection:
    """What a model's steps need to take their projection here: EOS's position in every union
    (service/runtime/shortlist.py keeps it at its id), the kernel the CPU runs, and whether the step is
    an fp32 one (`floating`: it gives its rows, PROJECTION_ROWS, and reads the union's rows of the
    output layer, [U, D]) or an int8 one (its codes and row scales, and the union's columns, [D, U])."""

    eos_position: int
    kernel: int
    max_sentences: int | None  # the most a batch may have to take its projection here; None: any
    floating: bool = False

    @property
    def outputs(self) -> tuple[str, ...]:
        """The step's outputs that the host's projection reads."""
        return (PROJECTION_ROWS,) if self.floating else PROJECTION_OUTPUTS

    def output_shapes(self, rows: int, vocab: BatchVocab) -> dict[str, tuple[tuple[int, ...], type]]:
        """Each of `outputs`' shape and type at `rows` rows over `vocab`."""
        if self.floating:
            return {PROJECTION_ROWS: ((rows, vocab.weight.shape[1]), np.float32)}
        return {
            PROJECTION_CODES: ((rows, vocab.weight.shape[0]), np.uint8),
            PROJECTION_ROW_SCALE: ((rows, 1), np.float32),
        }

    def takes(self, vocab: BatchVocab | None) -> bool:
        """Whether a batch over `vocab` takes its projection here."""
        if (  # not the whole vocabulary's, shared and kept: its packed copy would stay in memory
            vocab is None
            or vocab.shared
            or (self.max_sentences is not None and len(vocab.sentence_bias) > self.max_sentences)
            or len(vocab.vocab) <= NARROW_COLUMNS
            or vocab.weight.ndim != 2
            or not vocab.weight.flags.c_contiguous
        ):
            return False
        if self.floating:
            return (
                vocab.scale is None
                and vocab.weight.dtype == np.float32
                and vocab.weight.shape[0] == len(vocab.vocab)  # the step's [U, D] layout
            )
        return (
            vocab.col_sums is not None
            and vocab.scale is not None
            and vocab.weight.shape[1] == len(vocab.vocab)  # the step's [D, U] layout
            and vocab.weight.shape[0] % DEPTH == 0
        )

    def narrow_inputs(self, vocab: BatchVocab, beams: int, gives_logits: bool) -> dict[str, np.ndarray]:
        """The step's output layer inputs while the host takes its projection: the union's first
        NARROW_COLUMNS columns (made once a batch); their bias and vocabulary ids too where the step
        normalises its logits itself (not `gives_logits`)."""
        host = vocab.host
        names = (OUTPUT_WEIGHT, OUTPUT_VOCAB) if self.floating else (OUTPUT_WEIGHT, OUTPUT_SCALE, OUTPUT_VOCAB)
        if OUTPUT_VOCAB not in host:  # set last, so that a reader finds them all or none
            if self.floating:
                host[OUTPUT_WEIGHT] = np.ascontiguousarray(vocab.weight[:NARROW_COLUMNS])
            else:
                assert vocab.scale is not None
                host[OUTPUT_WEIGHT] = np.ascontiguousarray(vocab.weight[:, :NARROW_COLUMNS])
                host[OUTPUT_SCALE] = np.ascontiguousarray(vocab.scale[:NARROW_COLUMNS])
            host[OUTPUT_VOCAB] = np.ascontiguousarray(vocab.vocab[:NARROW_COLUMNS])  # last: the others are there
        if gives_logits:
            return {name: host[name] for name in names if name != OUTPUT_VOCAB}
        return {**{name: host[name] for name in names}, OUTPUT_BIAS: self.narrow_bias(vocab, beams)}

    def narrow_bias(self, vocab: BatchVocab, beams: int) -> np.ndarray:
        """The narrow union's bias for each of the batch's rows at `beams` a sentence (made once)."""
        key, rows = f"{OUTPUT_BIAS}.{beams}", vocab.host_rows
        if key not in rows:
            rows[key] = np.ascontiguousarray(vocab.row_bias(beams)[:, :NARROW_COLUMNS])
        return rows[key]

    def arguments(
        self, vocab: BatchVocab, outputs: Mapping[str, np.ndarray], eos_out: np.ndarray
    ) -> tuple[object, ...]:
        """top_k's projection (_common_step.c) for a step's outputs over `vocab`, EOS's log-probs into
        eos_out."""
        if self.floating:
            packed = packed_rows(vocab)
            return (outputs[PROJECTION_ROWS], packed, vocab.sentence_bias, self.eos_position, eos_out, self.kernel)
        packed, col_sums, col_scale = packed_columns(vocab)
        return (outputs[PROJECTION_CODES], outputs[PROJECTION_ROW_SCALE], packed, col_sums, col_scale,
                vocab.sentence_bias, self.eos_position, eos_out, self.kernel)  # fmt: skip


def packed_columns(vocab: BatchVocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's int8 columns packed for the host's product, their sums and their scales, padded to
    whole groups (0 beyond the union); made once a batch."""
    host = vocab.host
    if "packed" not in host:  # set last, once made whole, so that a reader finds all three or none
        assert native.common_step is not None and vocab.scale is not None and vocab.col_sums is not None
        depth, columns = vocab.weight.shape
        width = padded_width(columns)
        packed = np.empty(width * depth, np.int8)
        native.common_step.pack_projection(vocab.weight, packed)
        for name, values, dtype in (("col_sums", vocab.col_sums, np.int32), ("col_scale", vocab.scale, np.float32)):
            padded = np.zeros(width, dtype)
            padded[:columns] = values
            host[name] = padded
        host["packed"] = packed  # last: the others are there
    return host["packed"], host["col_sums"], host["col_scale"]


def packed_rows(vocab: BatchVocab) -> np.ndarray:
    """An fp32 batch's rows of the output layer packed for the host's product, padded to whole groups
    (0 beyond the union); made once a batch."""
    host = vocab.host
    if "packed" not in host:
        assert native.common_step is not None
        columns, depth = vocab.weight.shape
        packed = np.empty(padded_width(columns) * depth, np.float32)
        native.common_step.pack_projection(vocab.weight, packed)
        host["packed"] = packed
    return host["packed"]


def host_projection(step_outputs: set[str], eos_position: int) -> HostProjection | None:
    """A model's HostProjection where its step gives its projection's input rows (an int8 step's codes
    and scales, an fp32 one's rows), the C module is built, the CPU has a kernel that pays
    (HOST_SENTENCES, FLOAT_HOST_SENTENCES) and MTSERVE_HOST_PROJECTION is not off; else None."""
    if native.common_step is None or not host_projection_enabled():
        return None
    kernel, _name = native.common_step.projection_kernel()
    if set(PROJECTION_OUTPUTS) <= step_outputs and kernel in HOST_SENTENCES:
        return HostProjection(eos_position, kernel, HOST_SENTENCES[kernel])
    if PROJECTION_ROWS in step_outputs and kernel in FLOAT_HOST_SENTENCES:
        return HostProjection(eos_position, kernel, FLOAT_HOST_SENTENCES[kernel], floating=True)
    return None
