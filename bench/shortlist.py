"""Would a per-sentence output shortlist pay? `python bench/shortlist.py [--model DIR] [--sizes 512 1024 2048]`.

A shortlist gives each sentence its own few hundred candidate output tokens (the source's
tokens, the most frequent targets, and each source token's likeliest translations), so the
output projection, softmax and top-k run over those instead of the whole vocabulary. Two
questions decide whether it is worth building, and this measures both:

- coverage: with shortlists as `mtserve shortlist` builds them (export/shortlist.py) from the
  training pairs of configs/default.toml, how many of the model's own beam-5 outputs (the first --sentences of
  test2016 and of the Tatoeba test split, re-tokenized) use a token outside their sentence's
  shortlist, so that a shortlisted decoder could not produce them;
- speed: the output layer of --rows decoder rows (sentences x beam 5) over the full vocabulary
  (Gemm, LogSoftmax, TopK) against per-sentence shortlists of each size (each sentence's
  [D, size] slice of the output embedding, batched MatMul, LogSoftmax, TopK), in onnxruntime on
  --threads threads, the two interleaved for --rounds rounds; median milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sentencepiece as spm
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BENCH_CONFIG  # noqa: E402
from export.shortlist import LexicalTable, config_pairs  # noqa: E402
from model import corpus  # noqa: E402
from model.train_config import load_config  # noqa: E402
from service.graphs import DECODER_TOP_K, OPSET  # noqa: E402
from service.manifest import DEFAULT_MODEL_DIR, load_manifest  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.shortlist import always_candidates, sentence_shortlist  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402

SPLITS = ("test2016", "tatoeba-test")
BEAM = 5


def coverage(args: argparse.Namespace) -> None:
    data = load_config(BENCH_CONFIG, {}).data
    data_dir = corpus.resolve_data_dir(args.data_dir)
    manifest = load_manifest(args.model, verify=False)
    sp = spm.SentencePieceProcessor(model_file=str(args.model / manifest.files["tokenizer"]))
    translator = Translator.load(args.model, args.threads)
    options = DecodeOptions(beam_size=BEAM)
    always = always_candidates(manifest.special_ids)
    pairs_by_target = config_pairs(data, data_dir)  # as `mtserve shortlist` takes them
    for direction in data.directions:
        src_lang, tgt_lang = direction
        pairs = pairs_by_target[tgt_lang]
        table = LexicalTable.build(zip(sp.encode([s for s, _ in pairs]), sp.encode([t for _, t in pairs]),
                                       strict=True), sp.get_piece_size())  # fmt: skip
        for split in SPLITS:
            sources = corpus.split_texts(data, data_dir, split, direction)[0][: args.sentences]
            outputs = [t[0].text for t in translator.translate(sources, tgt_lang, options)]
            for size in args.sizes:
                missed_sentences = missed_tokens = tokens = 0
                for source, output in zip(sp.encode(sources), sp.encode(outputs), strict=True):
                    allowed = set(sentence_shortlist(source, table.translations, table.frequent, always, size).tolist())
                    missed = sum(token not in allowed for token in output)
                    missed_sentences += missed > 0
                    missed_tokens += missed
                    tokens += len(output)
                print(
                    f"coverage {src_lang}->{tgt_lang} {split}[:{len(sources)}] shortlist {size}: "
                    f"{missed_sentences} outputs with a token outside it, {missed_tokens} of {tokens} tokens"
                )


def _graphs(vocab: int, width: int, sentences: int, beam: int) -> tuple[bytes, bytes]:
    top_k = numpy_helper.from_array(np.array([DECODER_TOP_K], np.int64), "k")
    outputs = [helper.make_tensor_value_info("top", TensorProto.FLOAT, None)]
    hidden = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [None, width])
    embedding = np.random.default_rng(0).standard_normal((vocab, width)).astype(np.float32) * 0.05
    full = helper.make_graph(
        [
            helper.make_node("Gemm", ["hidden", "embedding"], ["logits"], transB=1),
            helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
            helper.make_node("TopK", ["log_probs", "k"], ["top", "top_ids"]),
        ],
        "full_vocabulary",
        [hidden],
        outputs,
        [numpy_helper.from_array(embedding, "embedding"), top_k],
    )
    per_sentence = numpy_helper.from_array(np.array([sentences, beam, width], np.int64), "per_sentence")
    rows = numpy_helper.from_array(np.array([sentences * beam, -1], np.int64), "rows")
    short = helper.make_graph(
        [
            helper.make_node("Reshape", ["hidden", "per_sentence"], ["grouped"]),
            helper.make_node("MatMul", ["grouped", "shortlist"], ["grouped_logits"]),  # [N, beam, size]
            helper.make_node("Reshape", ["grouped_logits", "rows"], ["logits"]),
            helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
            helper.make_node("TopK", ["log_probs", "k"], ["top", "top_ids"]),
        ],
        "shortlist",
        [hidden, helper.make_tensor_value_info("shortlist", TensorProto.FLOAT, [None, width, None])],
        outputs,
        [top_k, per_sentence, rows],
    )
    opsets = [helper.make_opsetid("", OPSET)]
    return (
        helper.make_model(full, opset_imports=opsets).SerializeToString(),
        helper.make_model(short, opset_imports=opsets).SerializeToString(),
    )


def speed(args: argparse.Namespace) -> None:
    manifest = load_manifest(args.model, verify=False)
    vocab, width, beam = manifest.vocab_size, manifest.d_model, BEAM
    if args.rows % beam:
        raise SystemExit(f"--rows {args.rows} is not a multiple of the beam, {beam}")
    sentences = args.rows // beam
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    full_graph, short_graph = _graphs(vocab, width, sentences, beam)
    full = ort.InferenceSession(full_graph, options, providers=["CPUExecutionProvider"])
    short = ort.InferenceSession(short_graph, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((args.rows, width)).astype(np.float32)

    def timed(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
        started = time.perf_counter()
        for _ in range(args.steps):
            session.run(None, feeds)
        return (time.perf_counter() - started) / args.steps * 1000

    for size in args.sizes:
        slices = rng.standard_normal((sentences, width, size)).astype(np.float32) * 0.05
        feeds = {"hidden": hidden, "shortlist": slices}
        timed(full, {"hidden": hidden}), timed(short, feeds)  # warm up
        rounds = [(timed(full, {"hidden": hidden}), timed(short, feeds)) for _ in range(args.rounds)]
        full_ms, short_ms = (statistics.median(r[i] for r in rounds) for i in (0, 1))
        print(
            f"speed {args.rows} rows, shortlist {size}: full vocabulary {full_ms:.1f} ms, "
            f"shortlist {short_ms:.1f} ms (medians of {args.rounds} interleaved rounds)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--sentences", type=int, default=500, help="first N of each split")
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--steps", type=int, default=10, help="runs per timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir")
    parser.add_argument("--only", choices=["coverage", "speed"])
    args = parser.parse_args()
    if args.only != "speed":
        coverage(args)
    if args.only != "coverage":
        speed(args)


if __name__ == "__main__":
    main()
