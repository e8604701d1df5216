"""The decoder's self-attention over the cache alone, ten ways, on random inputs:
`python bench/self_attention.py [--sentences 1 32 128] [--past 2 10 30] [--runs 30] [--cold MB]`.

- `dmmha`: onnxruntime's DecoderMaskedMultiHeadAttention as the decoder step runs it
  (export/graph_builder.py): the cache preallocated for --capacity positions, each row reading
  its earlier positions through the beam indirection (histories in runs, as beam search leaves
  them: bench/step_inputs.py, --redraw), its present key and value bound to the past buffers (no
  copy).
- `products`: matrix products over a cache laid out by sentence and head, all of a sentence's
  beams side by side: one product scores each row against every beam's history, GatherElements
  keeps the positions the row's indirection names, and ScatterElements puts the weights back for
  the product with the values.
- `plain`: matrix products over each row's own history, contiguous: what the attention costs
  where the cache is kept reordered (copies not counted).
- `masked`: a cache laid out by sentence, head and beam slot ([S, H, beams, capacity, D], each
  row writing its own slot, as the runtime's does by row): one product scores each row against
  every slot of its sentence over the whole capacity, an additive mask made from the
  indirection keeps the positions the row's history holds, and one product with the values
  follows; the new token's own key and value are a separate term. No gather, no reordering, no
  per-token calls: dense products only. Checked against `dmmha` on the same inputs before it is
  timed (`Bench.masked_difference`, also in tests/test_bench.py).
- `gqa`: onnxruntime's GroupQueryAttention (as many key heads as query heads) over each row's own
  history, in a cache of --capacity positions bound as past and present (no copy): what a step
  would run where the runtime moved the rows' histories as beam search reorders them (the moves not
  counted). Checked against `dmmha` on the same inputs with every row's indirection naming its own
  beam (`Bench.own_history_difference`, also in tests/test_bench.py).
- `gqa_tight`: the same in a cache of past + --room positions (1: the new token's, no gap between one
  row's history and the next).
- `dmmha_own`: `dmmha` with every row's indirection naming its own beam: the kernel's beam path
  over histories that lie in their own rows, read in order.
- `rows`: the same kernel without the beam inputs (no beam width, no indirection) over each row's
  own history in the same cache: its path for a search that keeps the rows' histories in their
  rows, which would move a row's keys and values where beam search continues another row.
  Checked as `gqa` is.
- `host`: the runtime's own kernel (service/runtime/_attention.c, through the C module's
  `self_attention`) on `dmmha`'s state and the exporter's biases, as the runtime runs it between
  a cut step's segments (service/runtime/segmented.py); checked against the node with tests/test_attention.py.
- `gather_mha`: onnxruntime's MultiHeadAttention over a cache reordered by copying, as
  CTranslate2 keeps its cache: a Gather of the past's rows by the rows they continue, then the
  node's past and present (the present a new cache of past + 1 positions). Checked against
  `dmmha` where each row's whole history lies in the row it continues
  (`Bench.gather_mha_difference`, also in tests/test_bench.py).

`--cold MB` writes that much other memory before each timed run, as a step's other nodes leave
the CPU's caches; without it the cache stays in them from run to run.

One layer, beam 5, the default model's 4 heads of 64, one thread; the new token's own key and
the padding mask are left out of `products` and `plain`, so they are floors. Prints the median
microseconds per layer of each, per sentence count and history length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.step_inputs import SEARCH_REDRAW, beam_histories

HEADS, HEAD_DIM, BEAM = 4, 64, 5
MS_DOMAIN = "com.microsoft"
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _input(name: str, dtype: int, shape: Sequence[str | int]) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _model(nodes: Sequence[NodeProto], inputs: Sequence[ValueInfoProto], outputs: Sequence[str]) -> ModelProto:
    results = [helper.make_tensor_value_info(o, F32, None) for o in outputs]
    graph = helper.make_graph(list(nodes), "attention", list(inputs), results)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])


def dmmha_model(capacity: int, beams: bool = True) -> ModelProto:
    """DecoderMaskedMultiHeadAttention on a cache of `capacity` positions, present on past; without
    `beams`, no beam width and no indirection: each row reads its own history."""
    width = HEADS * HEAD_DIM
    inputs = [_input(n, F32, ["B", 1, width]) for n in ("q", "k", "v")]
    inputs += [_input(n, F32, ["B", HEADS, capacity, HEAD_DIM]) for n in ("past_key", "past_value")]
    inputs += [_input("past_length", TensorProto.INT32, [1])]
    names = ["q", "k", "v", "", "", "past_key", "past_value", "past_length"]
    if beams:
        inputs += [
            _input("beam_width", TensorProto.INT32, [1]),
            _input("indirection", TensorProto.INT32, ["S", BEAM, capacity]),
        ]
        names += ["beam_width", "indirection"]
    node = helper.make_node(
        "DecoderMaskedMultiHeadAttention", names, ["out", "present_key", "present_value"],
        domain=MS_DOMAIN, num_heads=HEADS, past_present_share_buffer=1,
    )  # fmt: skip
    return _model([node], inputs, ["out", "present_key", "present_value"])


def gather_mha_model() -> ModelProto:
    """The past's rows gathered by the rows they continue ("parent"), then MultiHeadAttention with
    that past, its present the past and the new token's key and value (past + 1 positions)."""
    width = HEADS * HEAD_DIM
    inputs = [_input(n, F32, ["B", 1, width]) for n in ("q", "k", "v")]
    inputs += [_input(n, F32, ["B", HEADS, "P", HEAD_DIM]) for n in ("past_key", "past_value")]
    inputs += [_input("parent", I64, ["B"])]
    nodes = [
        helper.make_node("Gather", ["past_key", "parent"], ["continued_key"], axis=0),
        helper.make_node("Gather", ["past_value", "parent"], ["continued_value"], axis=0),
        helper.make_node(
            "MultiHeadAttention", ["q", "k", "v", "", "", "", "continued_key", "continued_value"],
            ["out", "present_key", "present_value"], domain=MS_DOMAIN, num_heads=HEADS,
        ),
    ]  # fmt: skip
    return _model(nodes, inputs, ["out", "present_key", "present_value"])


def gqa_model() -> ModelProto:
    """GroupQueryAttention over caches of any capacity ("C"), each row's history in its own row."""
    width = HEADS * HEAD_DIM
    inputs = [_input(n, F32, ["B", 1, width]) for n in ("q", "k", "v")]
    inputs += [_input(n, F32, ["B", HEADS, "C", HEAD_DIM]) for n in ("past_key", "past_value")]
    inputs += [_input("seqlens_k", TensorProto.INT32, ["B"]), _input("total_length", TensorProto.INT32, [1])]
    node = helper.make_node(
        "GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_length"],
        ["out", "present_key", "present_value"], domain=MS_DOMAIN, num_heads=HEADS, kv_num_heads=HEADS,
    )  # fmt: skip
    return _model([node], inputs, ["out", "present_key", "present_value"])


def products_model() -> ModelProto:
    inputs = [
        _input("q", F32, ["S", HEADS, BEAM, HEAD_DIM]),
        _input("keys_t", F32, ["S", HEADS, HEAD_DIM, "BP"]),
        _input("values", F32, ["S", HEADS, "BP", HEAD_DIM]),
        _input("index", I64, ["S", HEADS, BEAM, "P"]),
        _input("zeros", F32, ["S", HEADS, BEAM, "BP"]),
    ]
    nodes = [
        helper.make_node("MatMul", ["q", "keys_t"], ["every_beam"]),  # [S, H, beam, beam · P]
        helper.make_node("GatherElements", ["every_beam", "index"], ["scores"], axis=3),  # [S, H, beam, P]
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("ScatterElements", ["zeros", "index", "weights"], ["placed"], axis=3),
        helper.make_node("MatMul", ["placed", "values"], ["out"]),  # [S, H, beam, D]
    ]
    return _model(nodes, inputs, ["out"])


def plain_model() -> ModelProto:
    inputs = [
        _input("q", F32, ["B", HEADS, 1, HEAD_DIM]),
        _input("keys_t", F32, ["B", HEADS, HEAD_DIM, "P"]),
        _input("values", F32, ["B", HEADS, "P", HEAD_DIM]),
    ]
    nodes = [
        helper.make_node("MatMul", ["q", "keys_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "values"], ["out"]),
    ]
    return _model(nodes, inputs, ["out"])


def masked_model() -> ModelProto:
    d = HEAD_DIM
    per_row: list[str | int] = ["S", HEADS, BEAM, d]
    inputs = [_input(n, F32, per_row) for n in ("q", "k_new", "v_new")]
    inputs += [_input(n, F32, ["S", HEADS, "BC", d]) for n in ("keys", "values")]
    inputs += [_input("bias", F32, ["S", 1, BEAM, "BC"]), _input("split", I64, [2])]
    scale = float(1 / np.sqrt(d))
    nodes = [
        # [S, H, beam, beam · C]: each row against every slot of its sentence
        helper.make_node("FusedMatMul", ["q", "keys"], ["slots"], domain=MS_DOMAIN, transB=1, alpha=scale),
        helper.make_node("Add", ["slots", "bias"], ["history"]),  # -inf where the row's history does not hold the slot
        helper.make_node("Mul", ["q", "k_new"], ["own_products"]),
        helper.make_node("ReduceSum", ["own_products", "last_axis"], ["own_sum"], keepdims=1),
        helper.make_node("Mul", ["own_sum", "scale"], ["own"]),  # [S, H, beam, 1]
        helper.make_node("Concat", ["history", "own"], ["scores"], axis=-1),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("Split", ["weights", "split"], ["history_weights", "own_weight"], axis=-1),
        helper.make_node("MatMul", ["history_weights", "values"], ["from_history"]),
        helper.make_node("Mul", ["own_weight", "v_new"], ["from_own"]),
        helper.make_node("Add", ["from_history", "from_own"], ["out"]),  # [S, H, beam, D]
    ]
    model = _model(nodes, inputs, ["out"])
    model.graph.initializer.extend([
        helper.make_tensor("last_axis", I64, [1], [-1]), helper.make_tensor("scale", F32, [], [scale]),
    ])  # fmt: skip
    return model


def masked_feeds(feeds: dict[str, np.ndarray], sentences: int, past: int, capacity: int) -> dict[str, np.ndarray]:
    """The masked variant's inputs for the state that `feeds` gives DecoderMaskedMultiHeadAttention
    (rows [S · beam], caches [rows, H, dmmha capacity, D], indirection [S, beam, capacity]), its own
    cache holding the first `capacity` positions."""

    def by_slot(rows: np.ndarray) -> np.ndarray:  # [S · beam, 1, H · D] -> [S, H, beam, D]
        return np.ascontiguousarray(rows.reshape(sentences, BEAM, HEADS, HEAD_DIM).transpose(0, 2, 1, 3))

    def cache(buffer: np.ndarray) -> np.ndarray:  # [S · beam, H, C', D] -> [S, H, beam · C, D]
        slots = buffer.reshape(sentences, BEAM, HEADS, -1, HEAD_DIM)[:, :, :, :capacity].transpose(0, 2, 1, 3, 4)
        return np.ascontiguousarray(slots).reshape(sentences, HEADS, BEAM * capacity, HEAD_DIM)

    positions = np.arange(capacity)
    holds = feeds["indirection"][:, :, None, :capacity] == np.arange(BEAM)[None, None, :, None]  # [S, row, slot, C]
    holds &= positions < past
    bias = np.where(holds, 0.0, -np.inf).astype(np.float32).reshape(sentences, 1, BEAM, BEAM * capacity)
    return {
        "q": by_slot(feeds["q"]), "k_new": by_slot(feeds["k"]), "v_new": by_slot(feeds["v"]),
        "keys": cache(feeds["past_key"]), "values": cache(feeds["past_value"]),
        "bias": bias, "split": np.array([BEAM * capacity, 1], np.int64),
    }  # fmt: skip


def _session(model: ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _median_us(run: Callable[[], object], runs: int, other: np.ndarray | None = None) -> float:
    """The median of `runs` timed runs after five untimed ones; `other` (memory of the CPU's caches'
    size or more) is written before each, so that each run starts with its inputs out of them."""
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        if other is not None:
            other += 1.0
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e6)
    return round(statistics.median(times), 1)


class Bench:
    def __init__(self, capacity: int, runs: int, redraw: float = SEARCH_REDRAW, cold_mb: int = 0) -> None:
        self.capacity, self.runs, self.redraw = capacity, runs, redraw
        self.rng = np.random.default_rng(0)
        self.other = np.zeros(cold_mb << 18, np.float32) if cold_mb else None
        self.dmmha, self.products, self.plain, self.masked, self.gqa = (
            _session(dmmha_model(capacity)), _session(products_model()), _session(plain_model()),
            _session(masked_model()), _session(gqa_model()),
        )  # fmt: skip
        self.rows, self.gather_mha = _session(dmmha_model(capacity, beams=False)), _session(gather_mha_model())

    def normal(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32)

    def dmmha_state(self, sentences: int, past: int) -> tuple[dict[str, np.ndarray], ort.IOBinding]:
        """Random inputs for `sentences` of BEAM rows after `past` tokens, bound as the runtime binds
        the kernel."""
        rows, width = sentences * BEAM, HEADS * HEAD_DIM
        feeds = {name: self.normal(rows, 1, width) for name in ("q", "k", "v")}
        feeds |= {name: self.normal(rows, HEADS, self.capacity, HEAD_DIM) for name in ("past_key", "past_value")}
        feeds |= {"past_length": np.array([past], np.int32), "beam_width": np.array([BEAM], np.int32)}
        feeds["indirection"] = beam_histories(self.rng, sentences, BEAM, self.capacity, self.redraw)
        binding = self.dmmha.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("out", "cpu")
        for past_name, present in (("past_key", "present_key"), ("past_value", "present_value")):
            buffer = feeds[past_name]  # present is past: the runtime binds them to one buffer
            binding.bind_output(present, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        return feeds, binding

    def dmmha_us(self, sentences: int, past: int, own: bool = False) -> float:
        """The kernel's microseconds; `own`: every row's indirection names its own beam."""
        feeds, binding = self.dmmha_state(sentences, past)
        if own:
            feeds["indirection"][...] = np.arange(BEAM, dtype=np.int32)[None, :, None]
        return _median_us(lambda: self.dmmha.run_with_iobinding(binding), self.runs, self.other)

    def host_us(self, sentences: int, past: int) -> float:
        """The runtime's kernel on dmmha_state's state (its biases zero, as the node's here)."""
        from service.runtime import native

        if native.common_step is None:
            raise SystemExit(native.NOT_BUILT)
        feeds, _ = self.dmmha_state(sentences, past)
        out, bias = np.empty_like(feeds["q"]), np.zeros(3 * HEADS * HEAD_DIM, np.float32)
        length = np.array(past, np.int32)
        arguments = [feeds[n] for n in ("q", "k", "v")] + [bias, feeds["past_key"], feeds["past_value"]]
        arguments += [feeds["indirection"], length, feeds["beam_width"], out]
        attend = native.common_step.self_attention
        return _median_us(lambda: attend(*arguments), self.runs, self.other)

    def rows_binding(self, feeds: dict[str, np.ndarray]) -> ort.IOBinding:
        """The beam-free kernel bound to `feeds`' q, k, v, caches and past length (dmmha_state's),
        present on past."""
        binding = self.rows.io_binding()
        for name in ("q", "k", "v", "past_key", "past_value", "past_length"):
            binding.bind_cpu_input(name, feeds[name])
        binding.bind_output("out", "cpu")
        for past_name, present in (("past_key", "present_key"), ("past_value", "present_value")):
            buffer = feeds[past_name]
            binding.bind_output(present, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        return binding

    def rows_us(self, sentences: int, past: int) -> float:
        feeds, _ = self.dmmha_state(sentences, past)
        binding = self.rows_binding(feeds)
        return _median_us(lambda: self.rows.run_with_iobinding(binding), self.runs, self.other)

    def own_history_difference(self, sentences: int, past: int, variant: str) -> float:
        """The largest difference between `variant`'s output ("gqa" or "rows") and the kernel's on
        the same state, every row's indirection naming its own beam (its history in its own row)."""
        feeds, binding = self.dmmha_state(sentences, past)
        feeds["indirection"][...] = np.arange(BEAM, dtype=np.int32)[None, :, None]
        caches = {name: feeds[name].copy() for name in ("past_key", "past_value")}
        self.dmmha.run_with_iobinding(binding)
        expected = binding.copy_outputs_to_cpu()[0]
        session, other = (self.gqa, self.gqa_binding(feeds | caches, past)) if variant == "gqa" else (
            self.rows, self.rows_binding(feeds | caches)
        )  # fmt: skip
        session.run_with_iobinding(other)
        return float(np.abs(other.copy_outputs_to_cpu()[0] - expected).max())

    def gather_mha_state(self, sentences: int, past: int) -> tuple[dict[str, np.ndarray], ort.IOBinding]:
        """Random inputs for the gathered variant (each row continuing a random row of its sentence),
        bound with a present of past + 1 positions."""
        rows, width = sentences * BEAM, HEADS * HEAD_DIM
        feeds = {name: self.normal(rows, 1, width) for name in ("q", "k", "v")}
        feeds |= {name: self.normal(rows, HEADS, past, HEAD_DIM) for name in ("past_key", "past_value")}
        parent_beam = self.rng.integers(0, BEAM, rows)
        feeds["parent"] = (np.repeat(np.arange(sentences), BEAM) * BEAM + parent_beam).astype(np.int64)
        binding = self.gather_mha.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("out", "cpu")
        for present in ("present_key", "present_value"):
            binding.bind_output(present, "cpu", 0, np.float32, [rows, HEADS, past + 1, HEAD_DIM])
        return feeds, binding

    def gather_mha_difference(self, sentences: int, past: int) -> float:
        """The largest difference between the gathered variant's output and the kernel's where each
        row's whole history lies in the row it continues (its indirection names that beam at every
        position)."""
        feeds, binding = self.gather_mha_state(sentences, past)
        state, kernel = self.dmmha_state(sentences, past)
        for name in ("q", "k", "v"):
            state[name][...] = feeds[name]
        for name in ("past_key", "past_value"):
            state[name][:, :, :past] = feeds[name]
        state["indirection"][...] = (feeds["parent"] % BEAM).reshape(sentences, BEAM, 1).astype(np.int32)
        self.dmmha.run_with_iobinding(kernel)
        self.gather_mha.run_with_iobinding(binding)
        got, expected = binding.copy_outputs_to_cpu()[0], kernel.copy_outputs_to_cpu()[0]
        return float(np.abs(got - expected).max())

    def gather_mha_us(self, sentences: int, past: int) -> float:
        _, binding = self.gather_mha_state(sentences, past)
        return _median_us(lambda: self.gather_mha.run_with_iobinding(binding), self.runs, self.other)

    def gqa_binding(self, feeds: dict[str, np.ndarray], past: int) -> ort.IOBinding:
        """GroupQueryAttention bound to `feeds`' q, k, v and caches (dmmha_state's, or a capacity of
        their own), present on past, at `past` positions written."""
        rows = len(feeds["q"])
        binding = self.gqa.io_binding()
        for name in ("q", "k", "v", "past_key", "past_value"):
            binding.bind_cpu_input(name, feeds[name])
        binding.bind_cpu_input("seqlens_k", np.full(rows, past, np.int32))
        binding.bind_cpu_input("total_length", np.array([past + 1], np.int32))
        binding.bind_output("out", "cpu")
        for past_name, present in (("past_key", "present_key"), ("past_value", "present_value")):
            buffer = feeds[past_name]
            binding.bind_output(present, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        return binding

    def gqa_us(self, sentences: int, past: int, capacity: int) -> float:
        rows, width = sentences * BEAM, HEADS * HEAD_DIM
        feeds = {name: self.normal(rows, 1, width) for name in ("q", "k", "v")}
        feeds |= {name: self.normal(rows, HEADS, capacity, HEAD_DIM) for name in ("past_key", "past_value")}
        binding = self.gqa_binding(feeds, past)
        return _median_us(lambda: self.gqa.run_with_iobinding(binding), self.runs, self.other)

    def masked_difference(
        self, sentences: int, past: int, capacity: int, mask: Callable[[np.ndarray], np.ndarray] = lambda b: b
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The largest difference between the masked variant's output and the kernel's on the same
        state, and the masked variant's inputs; `mask` may alter its bias (a check that a wrong
        mask shows)."""
        feeds, binding = self.dmmha_state(sentences, past)
        self.dmmha.run_with_iobinding(binding)
        expected = binding.copy_outputs_to_cpu()[0]  # [rows, 1, H · D]
        masked = masked_feeds(feeds, sentences, past, capacity)
        masked["bias"] = mask(masked["bias"])
        got = self.masked.run(None, masked)[0].transpose(0, 2, 1, 3).reshape(expected.shape)
        return float(np.abs(got - expected).max()), masked

    def masked_us(self, sentences: int, past: int) -> float:
        # The cache's capacity grows in blocks of 16 positions (reallocated, as a runtime would).
        difference, feeds = self.masked_difference(sentences, past, max(16, -(-past // 16) * 16))
        if difference > 1e-4:
            raise SystemExit(f"masked attention differs from the kernel's by {difference}")
        return _median_us(lambda: self.masked.run(None, feeds), self.runs, self.other)

    def products_us(self, sentences: int, past: int) -> float:
        beams = self.rng.integers(0, BEAM, (sentences, 1, BEAM, past))  # each row's beam at each position
        index = np.ascontiguousarray(np.broadcast_to(beams * past + np.arange(past), (sentences, HEADS, BEAM, past)))
        feeds = {
            "q": self.normal(sentences, HEADS, BEAM, HEAD_DIM),
            "keys_t": self.normal(sentences, HEADS, HEAD_DIM, BEAM * past),
            "values": self.normal(sentences, HEADS, BEAM * past, HEAD_DIM),
            "index": index,
            "zeros": np.zeros((sentences, HEADS, BEAM, BEAM * past), np.float32),
        }
        return _median_us(lambda: self.products.run(None, feeds), self.runs, self.other)

    def plain_us(self, sentences: int, past: int) -> float:
        rows = sentences * BEAM
        feeds = {
            "q": self.normal(rows, HEADS, 1, HEAD_DIM),
            "keys_t": self.normal(rows, HEADS, HEAD_DIM, past),
            "values": self.normal(rows, HEADS, past, HEAD_DIM),
        }
        return _median_us(lambda: self.plain.run(None, feeds), self.runs, self.other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--past", type=int, nargs="+", default=[2, 10, 30])
    parser.add_argument("--capacity", type=int, default=64, help="positions the dmmha cache holds")
    parser.add_argument(
        "--redraw", type=float, default=SEARCH_REDRAW,
        help="the indirection's histories as bench/step_inputs.py draws them (1: every position's beam drawn)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold", type=int, default=0, metavar="MB", help="other memory written before each run")
    parser.add_argument("--room", type=int, default=1, help="gqa_tight's cache: past + ROOM positions")
    args = parser.parse_args()
    bench = Bench(args.capacity, args.runs, args.redraw, args.cold)
    for sentences in args.sentences:
        for past in args.past:
            print(json.dumps({
                "rows": sentences * BEAM, "past": past,
                "dmmha_us": bench.dmmha_us(sentences, past),
                "products_us": bench.products_us(sentences, past),
                "plain_us": bench.plain_us(sentences, past),
                "masked_us": bench.masked_us(sentences, past),
                "gqa_us": bench.gqa_us(sentences, past, args.capacity),
                "gqa_tight_us": bench.gqa_us(sentences, past, past + args.room),
                "dmmha_own_us": bench.dmmha_us(sentences, past, own=True),
                "rows_us": bench.rows_us(sentences, past),
                "gather_mha_us": bench.gather_mha_us(sentences, past),
                "host_us": bench.host_us(sentences, past),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
