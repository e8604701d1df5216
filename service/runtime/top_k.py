"""Each row's best log-probs and their tokens, for a decoder step whose graph returns its log-probs only.

A shortlisted step (export/shortlist.py) spans the union of its batch's shortlists, and onnxruntime's
`TopK` over it was a tenth of a large batch's step (docs/BENCHMARKS.md); the runtime takes the
top-k itself, in C (_common_step.c, `top_k`), or in numpy where the module is not built. Both rank
as the graph's `TopK` did: a higher log-prob first, then the lower position in the union (which is
sorted, so the lower token id); NaN last.
"""

from __future__ import annotations

import numpy as np

from service.runtime import native

# The outputs a decoder step's own top-k gives, which a shortlisted step leaves to the host.
TOP_K_OUTPUTS = ("top_log_probs", "top_ids")


def top_k(
    log_probs: np.ndarray, vocab: np.ndarray, values: np.ndarray, ids: np.ndarray, *projection: tuple[object, ...]
) -> None:
    """Each row of log_probs [R, U] float32: its best k (values' width) into values [R, k] float32, and
    their tokens, vocab [U] int64 at their positions, into ids [R, k] int64. With a projection's
    arguments (projection.py, which only the C module takes), log_probs is scratch for its logits."""
    if native.common_step is not None:
        native.common_step.top_k(log_probs, vocab, values, ids, *projection)
        return
    k = values.shape[1]
    # a stable sort of the negated values keeps equal ones in position order and puts NaN last
    best = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    np.copyto(values, np.take_along_axis(log_probs, best, axis=1))
    np.copyto(ids, vocab[best])
