import numpy as np

PROJECTED_TILE: int
FLOAT_PROJECTED_TILE: int
EXACT_CROSS_KERNEL: int
EXACT_CROSS_KERNEL_AVX2: int
EXACT_AVX2: int
EXACT_AVX512: int

def select_common(
    ids: np.ndarray,
    log_probs: np.ndarray,
    scores: np.ndarray,
    hist: np.ndarray,
    k: int,
    eos: int,
    window: int,
    next_rows: np.ndarray,
    last: np.ndarray,
    next_scores: np.ndarray,
    next_hist: np.ndarray,
    ended_rows: np.ndarray,
    ended_scores: np.ndarray,
    ended_sentences: np.ndarray,
    history: np.ndarray = ...,
    length: int = ...,
    next_ids: np.ndarray = ...,
) -> tuple[int, int]: ...
def reorder_history(history: np.ndarray, rows: np.ndarray, beams: int, length: int) -> None: ...
def move_rows(storage: np.ndarray, old: np.ndarray, new: np.ndarray, length: int) -> bool: ...
def take_columns(rows: np.ndarray, vocab: np.ndarray, out: np.ndarray) -> None: ...
def common_steps(
    run: object,
    binding: object,
    steps: int,
    census: np.ndarray,
    census_at_start: int,
    position: np.ndarray,
    top_ids: np.ndarray,
    top_log_probs: np.ndarray,
    history: np.ndarray,
    next_ids: np.ndarray,
    length: int,
    k: int,
    eos: int,
    window: int,
    *arrays: object,
) -> tuple[int, int, int, int]: ...
def top_k(
    log_probs: np.ndarray, vocab: np.ndarray, values: np.ndarray, ids: np.ndarray, projection: tuple[object, ...] = ...
) -> None: ...
def pack_projection(weight: np.ndarray, packed: np.ndarray) -> None: ...
def projection_kernel() -> tuple[int, str]: ...
def projection_kernels() -> tuple[int, ...]: ...
def self_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    bias: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    indirection: np.ndarray,
    length: np.ndarray,
    beam_width: np.ndarray,
    out: np.ndarray,
    kernel: int = ...,
) -> None: ...
def cross_attention(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray | None,
    out: np.ndarray,
    kernel: int = ...,
) -> None: ...
def attention_kernel(depth: int) -> int: ...
def exp_sum(row: np.ndarray, top: float, vectors: int) -> float: ...
def float_vectors() -> int: ...
def exact_cross_attention() -> int: ...
