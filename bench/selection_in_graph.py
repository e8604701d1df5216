"""What a step would cost with the beam's selection inside the decoder graph and the host only looping.

    python bench/selection_in_graph.py --model runs/sl/s1024 [--threads 1] [--lengths 12 20 28 36]

A measure for a design. Its selection was built since on a branch, with the host's bookkeeping
kept, and gained nothing: the nodes cost what the host's selection costs (docs/BENCHMARKS.md, "The
beam's selection inside the decoder step's run"). Between two graph runs the beam search spends
about 0.15 ms of Python a step (bench/sentence_time.py); this asks what is left of a step without
it. The model directory's decoder step (one with an output shortlist, `mtserve shortlist`) is
extended with the selection of the common case: each row's 2K best continuations plus its beam's
score, EOS excluded, the sentence's K best of those (`TopK`), the next tokens and scores, the cache
indirection's update and the next length, all written to buffers that the next run reads. Bound
twice, each binding reading what the other writes, the step then runs L times in a plain loop.

Against it, the runtime's own search on the same sentence at the same forced length L (no
hypothesis ends before L, each is cut there; the repetition guard off, since the extension has
none): each of the first 40 test2016 sentences alone at beam 5, the two alternating every five
sentences, two rounds; the slope of the median time against L is a step whole, as in
bench/step_slope.py. Before timing, the best beam's last token after 12 steps is checked to be the
runtime's on the first 10 sentences.

Left out of the extension, and needed before it could serve: hypotheses that end (EOS among a
sentence's K best), the repetition guard, finished sentences leaving the batch, more than one
sentence, alignments. The runtime would have to fall back to its own selection on the steps where
any of those happens, and both would have to choose alike on the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_target  # noqa: E402
from bench.one_sentence import bench_sources  # noqa: E402
from bench.step_slope import fit  # noqa: E402
from service.graphs import CACHE_INDIRECTION, PAST_LENGTH  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR  # noqa: E402
from service.runtime.beam import DecodeOptions, _pad_sources, beam_search  # noqa: E402
from service.runtime.sessions import OnnxModel, _session  # noqa: E402
from service.runtime.shortlist import OUTPUT_BIAS, OUTPUT_SCALE, OUTPUT_VOCAB, OUTPUT_WEIGHT  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402

BEAMS = 5
WIDTH = 2 * BEAMS  # candidates a row offers, as the runtime's search takes them
SCORES, NEXT_IDS, NEXT_SCORES, NEXT_INDIRECTION, NEXT_LENGTH = (
    "beam_scores", "next_ids", "next_scores", "next_indirection", "next_length",
)  # fmt: skip


def extend(step: Path, out: Path, eos: int) -> Path:
    """The decoder step with the selection of one sentence's BEAMS rows appended (the module's doc)."""
    graph = onnx.load(str(step), load_external_data=True)
    g = graph.graph
    constants: dict[str, np.ndarray] = {
        "sel.zero": np.array([0], np.int64), "sel.width": np.array([WIDTH], np.int64),
        "sel.axis1": np.array([1], np.int64), "sel.flat": np.array([1, -1], np.int64),
        "sel.column": np.array([-1, 1], np.int64), "sel.vector": np.array([-1], np.int64),
        "sel.beams": np.array([BEAMS], np.int64), "sel.width_scalar": np.array(WIDTH, np.int64),
        "sel.eos": np.array(eos, np.int64), "sel.never": np.array(-np.inf, np.float32),
        "sel.own_beam": np.arange(BEAMS, dtype=np.int32).reshape(1, BEAMS, 1), "sel.one": np.array(1, np.int32),
        "sel.start": np.array(0, np.int64), "sel.step": np.array(1, np.int64),
        "sel.capacity_axis": np.array([2], np.int64),
    }  # fmt: skip
    g.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    node = helper.make_node
    g.node.extend([
        # each row's 2K best, EOS excluded (no hypothesis ends here), plus its beam's score
        node("Slice", ["top_log_probs", "sel.zero", "sel.width", "sel.axis1"], ["sel.log_probs"]),
        node("Slice", ["top_ids", "sel.zero", "sel.width", "sel.axis1"], ["sel.ids"]),
        node("Equal", ["sel.ids", "sel.eos"], ["sel.is_eos"]),
        node("Where", ["sel.is_eos", "sel.never", "sel.log_probs"], ["sel.open"]),
        node("Unsqueeze", [SCORES, "sel.axis1"], ["sel.scores"]),
        node("Add", ["sel.scores", "sel.open"], ["sel.candidates"]),
        # the sentence's K best of its rows' candidates: the next tokens, scores and the rows they extend
        node("Reshape", ["sel.candidates", "sel.flat"], ["sel.all"]),
        node("TopK", ["sel.all", "sel.beams"], ["sel.best", "sel.chosen"], axis=1),
        node("Reshape", ["sel.ids", "sel.flat"], ["sel.all_ids"]),
        node("GatherElements", ["sel.all_ids", "sel.chosen"], ["sel.tokens"], axis=1),
        node("Reshape", ["sel.tokens", "sel.column"], [NEXT_IDS]),
        node("Reshape", ["sel.best", "sel.vector"], [NEXT_SCORES]),
        node("Div", ["sel.chosen", "sel.width_scalar"], ["sel.parents"]),
        node("Reshape", ["sel.parents", "sel.vector"], ["sel.parent_rows"]),
        # the indirection: this position is each row's own, then each row takes its parent's history
        node("Shape", [CACHE_INDIRECTION], ["sel.shape"]),
        node("Gather", ["sel.shape", "sel.capacity_axis"], ["sel.capacity_1"]),
        node("Squeeze", ["sel.capacity_1"], ["sel.capacity"]),
        node("Range", ["sel.start", "sel.capacity", "sel.step"], ["sel.positions"]),
        node("Cast", [PAST_LENGTH], ["sel.length"], to=TensorProto.INT64),
        node("Equal", ["sel.positions", "sel.length"], ["sel.this_position"]),
        node("Where", ["sel.this_position", "sel.own_beam", CACHE_INDIRECTION], ["sel.advanced"]),
        node("Gather", ["sel.advanced", "sel.parent_rows"], [NEXT_INDIRECTION], axis=1),
        node("Add", [PAST_LENGTH, "sel.one"], [NEXT_LENGTH]),
    ])  # fmt: skip
    g.input.append(helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["batch"]))
    g.output.extend([
        helper.make_tensor_value_info(NEXT_IDS, TensorProto.INT64, ["batch", 1]),
        helper.make_tensor_value_info(NEXT_SCORES, TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info(NEXT_INDIRECTION, TensorProto.INT32, [1, BEAMS, "capacity"]),
        helper.make_tensor_value_info(NEXT_LENGTH, TensorProto.INT32, []),
    ])  # fmt: skip
    onnx.save(graph, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


class InGraphSearch:
    """One sentence decoded by the extended step in a loop: the runs' outputs are the next runs' inputs."""

    def __init__(self, model: OnnxModel, tag: int, graph: Path, threads: int) -> None:
        self.model, self.tag = model, tag
        self.session = _session(graph, threads)

    def decode(self, source: list[int], length: int) -> list[int]:
        """Runs `length` steps; returns each step's best token (the best beam's, at that step)."""
        model = self.model
        ids, mask = _pad_sources([source], model.pad_id)  # as the runtime's search pads it
        cross = model.encode(ids, mask).cross
        vocab = model.output_vocab([source], [self.tag])
        if vocab is None:
            raise SystemExit(f"{model.model_dir} has no output shortlist: run `mtserve shortlist` on a copy first")
        cache = model.new_cache(1, length + 1, BEAMS)
        cache.reorder(np.zeros(BEAMS, np.int64))  # BEAMS rows of the one sentence from the first step
        inputs = {"attention_mask": mask, "beam_width": np.array([BEAMS], np.int32), OUTPUT_WEIGHT: vocab.weight,
                  OUTPUT_BIAS: vocab.row_bias(BEAMS), OUTPUT_VOCAB: vocab.vocab}  # fmt: skip
        if vocab.scale is not None:
            inputs[OUTPUT_SCALE] = vocab.scale
        inputs |= {f"cross_{kv}.{layer}": np.ascontiguousarray(cross[2 * layer + (kv == "value")])
                   for layer in range(model.manifest.decoder_layers) for kv in ("key", "value")}  # fmt: skip
        bound = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in inputs.items()}
        only_first = np.array([0.0] + [-np.inf] * (BEAMS - 1), np.float32)  # the rows start alike
        state: list[dict[str, np.ndarray]] = [
            {"input_ids": np.full((BEAMS, 1), self.tag, np.int64), SCORES: only_first,
             CACHE_INDIRECTION: np.zeros((1, BEAMS, cache.capacity), np.int32), PAST_LENGTH: np.array(0, np.int32)},
            {"input_ids": np.zeros((BEAMS, 1), np.int64), SCORES: np.zeros(BEAMS, np.float32),
             CACHE_INDIRECTION: np.zeros((1, BEAMS, cache.capacity), np.int32), PAST_LENGTH: np.array(0, np.int32)},
        ]  # fmt: skip
        outputs = {"input_ids": NEXT_IDS, SCORES: NEXT_SCORES, CACHE_INDIRECTION: NEXT_INDIRECTION,
                   PAST_LENGTH: NEXT_LENGTH}  # fmt: skip
        bindings = []
        for reads, writes in ((state[0], state[1]), (state[1], state[0])):
            binding = self.session.io_binding()
            for name, value in bound.items():
                binding.bind_ortvalue_input(name, value)
            for index, buffer in enumerate(cache.values):
                kind = f"{'key' if index % 2 == 0 else 'value'}.{index // 2}"
                binding.bind_ortvalue_input(f"past_{kind}", buffer)
                binding.bind_ortvalue_output(f"present_{kind}", buffer)
            for name, output in outputs.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(reads[name]))
                binding.bind_ortvalue_output(output, ort.OrtValue.ortvalue_from_numpy(writes[name]))
            bindings.append(binding)
        best = []
        for step in range(length):
            self.session.run_with_iobinding(bindings[step % 2])
            best.append(int(state[(step + 1) % 2]["input_ids"][0, 0]))
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory with an output shortlist")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[12, 20, 28, 36])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    translator = Translator.load(args.model, args.threads)
    model, tag = translator.model, translator.languages.tag_ids[bench_target()]
    sources = bench_sources(DEFAULT_MODEL_DIR, args.data_dir)
    with tempfile.TemporaryDirectory() as work:
        graph = extend(args.model / model.manifest.files["decoder"], Path(work) / "step.onnx", model.eos_id)
        in_graph = InGraphSearch(model, tag, graph, args.threads)

        def runtime(source: list[int], length: int) -> list[int]:
            options = DecodeOptions(beam_size=BEAMS, min_length=length, max_length=length, proportional_limit=False,
                                    repetition_guard=False, cut_degenerate=False)  # fmt: skip
            return beam_search(model, [source], [tag], options)[0][0].tokens

        agree = sum(in_graph.decode(s, 12)[-1] == runtime(s, 12)[-1] for s in sources[:10])
        if agree < 9:
            raise SystemExit(f"the extended step chose as the runtime on {agree} of 10 sentences only")
        engines: dict[str, Callable[[list[int], int], list[int]]] = {"runtime": runtime, "in-graph": in_graph.decode}
        times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in args.lengths} for name in engines}
        for round_index in range(args.rounds):
            for length in args.lengths:
                for block, start in enumerate(range(0, len(sources), 5)):
                    order = list(engines) if (round_index + block) % 2 else list(engines)[::-1]
                    for name in order:
                        for source in sources[start : start + 5]:
                            started = time.perf_counter()
                            engines[name](source, length)
                            times[name][length].append((time.perf_counter() - started) * 1000)
    for name, by_length in times.items():
        medians = {n: statistics.median(t) for n, t in by_length.items()}
        slope, intercept = fit(medians)
        print(json.dumps({"search": name, "threads": args.threads, "agree_of_10": agree,
                          "median_ms_by_length": {n: round(m, 2) for n, m in medians.items()},
                          "step_ms": round(slope, 3), "rest_ms": round(intercept, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
