"""Each row's best log-probs and their tokens, for a decoder step whose graph leaves its top-k to the host.

A shortlisted step (export/shortlist.py) spans the union of its batch's shortlists, and onnxruntime's
`TopK` over it was a tenth of a large batch's step (docs/BENCHMARKS.md); the runtime takes the
top-k itself, in C (_common_step.c, `top_k`), or in numpy where the module is not built. Both rank
as the graph's `TopK` did: a higher log-prob first, then the lower position in the union (which is
sorted, so the lower token id); NaN last.

A step shortlisted since it gives its logits (`STEP_LOGITS`) and leaves the log-softmax to the host too:
each row takes its sentence's bias (its shortlist's mask and the projection's bias), is normalised by its
log-sum-exp, and EOS's log-prob is taken from it, as the graph's `Add`, `LogSoftmax` and `Gather` did.
"""

from __future__ import annotations

import numpy as np

from service.runtime import native

# The outputs a decoder step's own top-k gives, which a shortlisted step leaves to the host.
TOP_K_OUTPUTS = ("top_log_probs", "top_ids")
# A shortlisted step's output that leaves the bias, log-softmax and EOS's log-prob to the host as well:
# [rows, U] float32, its projection over the bound union.
STEP_LOGITS = "logits"


def top_k(
    log_probs: np.ndarray, vocab: np.ndarray, values: np.ndarray, ids: np.ndarray, *projection: tuple[object, ...]
) -> None:
    """Each row of log_probs [R, U] float32: its best k (values' width) into values [R, k] float32, and
    their tokens, vocab [U] int64 at their positions, into ids [R, k] int64. With (bias [S, U], EOS's
    position, eos_out [R]), log_probs are a step's logits, written over (normalised_logits); with a
    projection's arguments (projection.py, which only the C module takes), scratch for its logits."""
    if native.common_step is not None:
        native.common_step.top_k(log_probs, vocab, values, ids, *projection)
        return
    if projection:
        bias, eos_position, eos_out = projection[0]
        assert isinstance(bias, np.ndarray) and isinstance(eos_position, int) and isinstance(eos_out, np.ndarray)
        normalised_logits(log_probs, bias, eos_position, eos_out)
    k = values.shape[1]
    # a stable sort of the negated values keeps equal ones in position order and puts NaN last
    best = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    np.copyto(values, np.take_along_axis(log_probs, best, axis=1))
    np.copyto(ids, vocab[best])


def normalised_logits(logits: np.ndarray, bias: np.ndarray, eos_position: int, eos_out: np.ndarray) -> None:
    """A step's logits [R, U] made its log-probs in place: each row r takes bias [S, U]'s row of its
    sentence, r // (R / S), and its log-sum-exp is taken off (the bias's -inf columns left out);
    eos_out [R] gets each row's at eos_position."""
    rows, sentences = len(logits), len(bias)
    if sentences < 1 or rows % sentences or bias.shape[1] != logits.shape[1] or eos_out.shape != (rows,):
        raise ValueError(f"logits {logits.shape}, bias {bias.shape} and eos_out {eos_out.shape} do not agree")
    by_sentence = logits.reshape(sentences, rows // sentences, -1)
    by_sentence += bias[:, None, :]
    top = np.max(logits, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        logits -= top + np.log(np.sum(np.exp(logits - top), axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    np.copyto(eos_out, logits[:, eos_position])
