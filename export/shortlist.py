"""A per-sentence output shortlist: the decoder's output layer over each sentence's likely tokens.

Most of a small model's decoder step at a few rows is its output layer: the projection onto
the whole vocabulary, the log-softmax and the top-k. A sentence's translation draws on a few
hundred of those tokens. With a shortlist, each sentence gets `size` candidate tokens (its
source's likeliest translations, its own tokens, the target language's most frequent tokens), a
batch runs its output layer over the union of its sentences' candidates, and each row is masked
to its own sentence's: so a sentence decodes the same alone or in any batch, as without one.

Two parts, written into a model directory by `add_shortlist`:

- the lexical table (`LexicalTable.build`): per target language, each source token's likeliest
  target tokens by sentence-level co-occurrence over training pairs, p(target token in the pair |
  source token in it), and the target tokens by frequency;
- the decoder step rewritten (`rewrite_output_layer`): its output projection reads its weights
  (and int8 scales) from inputs, the runtime's columns for the batch's union, and the step gives
  the product as its `logits` [rows, U]; its log-softmax, top-k and EOS's Gather go, and the
  runtime adds each row's bias (its sentence's mask and the projection's own bias), normalises and
  takes each row's best in one pass (service/runtime/top_k.py), mapped back to vocabulary ids
  through the union. A step whose tokens never generated are barred after its log-softmax keeps
  it: an additive `output_bias` [rows, U] input carries the bias before it, and the host ranks its
  `log_probs` (the barred tokens' -inf Gathered through `output_vocab` [U]).

The projection's weights move from the weights file into OUTPUT_LAYER_FILE with the table
(service/runtime/shortlist.py reads it). CTranslate2's vocabulary map does the same for a batch,
without the per-row mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.shared_weights import share_weights
from export.writer import REPORT_FILE
from model import corpus
from model.data_config import DataConfig
from service.graphs import DECODER_TOP_K
from service.manifest import MANIFEST_FILE, Manifest, load_manifest, sha256_file
from service.runtime.projection import PROJECTION_CODES, PROJECTION_ROW_SCALE, PROJECTION_ROWS, PROJECTION_ZERO_POINT
from service.runtime.shortlist import (
    FREQUENT_PREFIX,
    LEXICAL_PREFIX,
    OUTPUT_BIAS,
    OUTPUT_LAYER_FILE,
    OUTPUT_SCALE,
    OUTPUT_VOCAB,
    OUTPUT_WEIGHT,
)
from service.runtime.text_tokenizer import load_text_tokenizer
from service.runtime.top_k import STEP_LOGITS, TOP_K_OUTPUTS

# Translations kept per source token: a sentence of ten tokens reaches a shortlist of 1,024
# within this many ranks.
LEXICAL_RANKS = 96
# On the committed model, a table from 19,000 pairs each way cost about 1 BLEU on val, from
# 188,000 about 0.1 (docs/BENCHMARKS.md): fewer source sentences than this get a warning.
FEW_SENTENCES = 100_000
# --sources: each sentence's best translations from its beam, each a pair (from 19,000 sentences
# each way, 4 of them gave 0.47 and 0.05 more val BLEU than the best alone; docs/BENCHMARKS.md).
TRANSLATIONS_PER_SENTENCE = 4
# Pairs read into a table show their progress (188,000 pairs took 6 s a language to tokenize and
# count, and a user's corpus may hold millions), in steps of this many; a few thousand show none.
PROGRESS_EVERY = 1000
PROGRESS_HIDDEN_UP_TO = 10_000


class ShortlistError(ValueError):
    """A model directory or graph the shortlist cannot be added to; names what and why."""


@dataclass(frozen=True)
class LexicalTable:
    translations: np.ndarray  # [V, LEXICAL_RANKS] each source token's likeliest target tokens, best first
    frequent: np.ndarray  # [V] target tokens, most frequent first

    @classmethod
    def build(cls, pairs: Iterable[tuple[Sequence[int], Sequence[int]]], vocab_size: int) -> LexicalTable:
        """From (source ids, target ids) pairs: p(t in the target | s in the source), counted once per
        pair; ties by the more frequent target, then the lower id."""
        cells: list[np.ndarray] = []
        source_count = np.zeros(vocab_size, np.int64)
        target_count = np.zeros(vocab_size, np.int64)
        for source, target in pairs:
            s, t = np.unique(np.asarray(source, np.int64)), np.unique(np.asarray(target, np.int64))
            if not len(s) or not len(t):
                continue
            source_count[s] += 1
            target_count[t] += 1
            cells.append(np.add.outer(s * vocab_size, t).ravel())
        if not cells:
            raise ShortlistError("no training pair to build the lexical table from")
        codes, together = np.unique(np.concatenate(cells), return_counts=True)
        src, tgt = np.divmod(codes, vocab_size)
        likely = together / source_count[src]
        # by source, then likelier first, then more frequent target, then lower id
        order = np.lexsort((tgt, -target_count[tgt], -likely, src))
        src, tgt = src[order], tgt[order]
        starts = np.searchsorted(src, np.arange(vocab_size))
        rank = np.arange(len(src)) - starts[src]
        frequent = np.lexsort((np.arange(vocab_size), -target_count)).astype(np.int32)
        # a source token seen with fewer targets than the ranks is completed by the frequent ones
        translations = np.tile(frequent[:LEXICAL_RANKS], (vocab_size, 1))
        kept = rank < LEXICAL_RANKS
        translations[src[kept], rank[kept]] = tgt[kept]
        return cls(translations.astype(np.int32), frequent)


@dataclass(frozen=True)
class OutputLayer:
    """What the rewritten step no longer holds: its projection as the product read it."""

    weight: np.ndarray  # int8 [D, V] (MatMulIntegerToFloat), fp32 [D, V] (MatMul) or [V, D] (Gemm transB)
    vocab_axis: int
    scale: np.ndarray | None  # int8: [V] per column
    bias: np.ndarray | None  # [V]
    block: int  # the union is padded to a multiple of this (1: the step has no blockwise top-k)
    k_blocks: int  # and holds at least this many blocks


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """An initializer's value, or that of a Cast of one (fp32 weights stored as exact fp16)."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] == name:
            value = _constant(graph, node.input[0])
            to = next(a.i for a in node.attribute if a.name == "to")
            return None if value is None else value.astype(helper.tensor_dtype_to_np_dtype(to))
    return None


def rewrite_output_layer(model: onnx.ModelProto, vocab_size: int) -> OutputLayer:
    """Rewrite a decoder step (external data loaded) so that its output layer runs over the
    shortlist inputs; returns the projection it took out. Refuses a graph it does not recognise."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    if any(i.name == OUTPUT_WEIGHT for i in graph.input):
        raise ShortlistError("the decoder step already takes a shortlist")
    softmax = producers.get("log_probs")
    barred: onnx.NodeProto | None = None  # tokens never generated: -inf added after the log-softmax
    if softmax is not None and softmax.op_type == "Add":
        side = next((i for i in (0, 1) if _constant(graph, softmax.input[i]) is not None), None)
        normalised = None if side is None else producers.get(softmax.input[1 - side])
        if side is not None and normalised is not None and normalised.op_type == "LogSoftmax":
            never = f"{softmax.input[side]}.shortlist"
            barred = helper.make_node("Gather", [softmax.input[side], OUTPUT_VOCAB], [never], name=never, axis=0)
            softmax.input[side] = never
            softmax = normalised
    if softmax is None or softmax.op_type != "LogSoftmax":
        raise ShortlistError("the decoder step's log_probs do not come from a LogSoftmax")
    logits = softmax.input[0]
    node = producers[logits]
    bias: np.ndarray | None = None
    dropped: list[onnx.NodeProto] = []
    if node.op_type == "Add":  # the projection's bias
        for side in (0, 1):
            value = _constant(graph, node.input[side])
            if value is not None and value.shape == (vocab_size,):
                bias, logits = value.astype(np.float32), node.input[1 - side]
                dropped.append(node)
                node = producers[logits]
                break
    scaled_after = node.op_type == "Mul"
    if node.op_type == "Mul":  # int8 per row: the product times each row's range
        node = next((producers[i] for i in node.input if producers.get(i) is not None
                     and producers[i].op_type == "MatMulIntegerToFloat"), node)  # fmt: skip
    scale: np.ndarray | None = None
    weight = _constant(graph, node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.ndim != 2:
        raise ShortlistError(f"the decoder step's output projection ({node.op_type}) has no constant 2-D weight")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMulIntegerToFloat":
        if len(node.input) > 5 and any(node.input[5:]):
            raise ShortlistError("the int8 output projection has a weight zero point or a bias input")
        scale = _constant(graph, node.input[3])
        if scale is None or scale.shape != (vocab_size,):
            raise ShortlistError("the int8 output projection has no per-column weight scale")
        node.input[3] = OUTPUT_SCALE
        axis = 1
        if not scaled_after:
            _expose_projection_rows(graph, node, producers)
    elif node.op_type == "Gemm":
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            raise ShortlistError("the output projection's Gemm scales or transposes its input")
        axis = 0 if attrs.get("transB", 0) else 1
        if axis == 0 and weight.dtype == np.float32 and producers.get(node.input[0]) is not None:
            _rename_as_outputs(graph, {node.input[0]: (PROJECTION_ROWS, TensorProto.FLOAT, ["batch", None])})
        if len(node.input) > 2 and node.input[2]:
            c = _constant(graph, node.input[2])
            if c is None or c.shape != (vocab_size,):
                raise ShortlistError("the output projection's Gemm has a bias that is not one per token")
            bias = c.astype(np.float32) if bias is None else bias + c.astype(np.float32)
            del node.input[2:]
    elif node.op_type == "MatMul":
        axis = 1
    else:
        raise ShortlistError(f"the decoder step's output projection is a {node.op_type}, not a product it knows")
    if weight.shape[axis] != vocab_size:
        raise ShortlistError(f"the output projection's weight {weight.shape} does not span the vocabulary")
    node.input[1] = OUTPUT_WEIGHT

    dropped.extend(_top_k_chain(graph, producers))
    kept = [n for n in graph.node if not any(n is d for d in dropped)]
    if barred is None:  # the logits come out; the host adds the bias and normalises (top_k.py)
        kept = _logits_as_output(graph, kept, softmax, logits)
    else:  # its tokens never generated are barred after the log-softmax, which stays in the graph
        masked = "logits.shortlist"
        softmax.input[0] = masked
        add = helper.make_node("Add", [logits, OUTPUT_BIAS], [masked], name="shortlist.bias")
        kept.insert(next(i for i, n in enumerate(kept) if n is softmax), add)
        kept.insert(0, barred)
    del graph.node[:]
    graph.node.extend(kept)
    top_k = [o for o in graph.output if o.name in TOP_K_OUTPUTS]
    for output in top_k:
        graph.output.remove(output)

    dim = weight.shape[1 - axis]
    weight_shape: list[int | str] = ["shortlist", dim] if axis == 0 else [dim, "shortlist"]
    graph.input.extend(
        [
            helper.make_tensor_value_info(OUTPUT_WEIGHT, helper.np_dtype_to_tensor_dtype(weight.dtype), weight_shape),
            *([helper.make_tensor_value_info(OUTPUT_SCALE, TensorProto.FLOAT, ["shortlist"])] if scale is not None
              else []),
        ]
    )  # fmt: skip
    if barred is not None:
        graph.input.extend(
            [
                helper.make_tensor_value_info(OUTPUT_BIAS, TensorProto.FLOAT, ["batch", "shortlist"]),
                helper.make_tensor_value_info(OUTPUT_VOCAB, TensorProto.INT64, ["shortlist"]),
            ]
        )
    for output in graph.output:
        if output.name == "log_probs":
            output.type.tensor_type.shape.dim[1].ClearField("dim_value")
            output.type.tensor_type.shape.dim[1].dim_param = "shortlist"
    used = _read_names(graph) | {o.name for o in graph.output}
    initializers = {i.name for i in graph.initializer}
    dead_casts = [
        n for n in graph.node if n.op_type == "Cast" and n.input[0] in initializers and n.output[0] not in used
    ]
    for node in dead_casts:
        graph.node.remove(node)
    used = _read_names(graph)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return OutputLayer(weight, axis, None if scale is None else scale.astype(np.float32), bias, 1, DECODER_TOP_K)


def _logits_as_output(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], softmax: onnx.NodeProto, logits: str
) -> list[onnx.NodeProto]:
    """The step's nodes without its log-softmax and EOS's Gather of log_probs, and its projection's
    product (`logits`) given as the output STEP_LOGITS in their stead: the host adds each row's bias
    (its shortlist's mask and the projection's bias), normalises the rows and takes EOS's log-prob
    (top_k.py), as those nodes did, in the pass that ranks them."""
    eos = [n for n in nodes if n.op_type == "Gather" and list(n.input[:1]) == ["log_probs"]
           and list(n.output) == ["eos_log_prob"]]  # fmt: skip
    kept = [n for n in nodes if n is not softmax and not any(n is e for e in eos)]
    readers = [n.name or n.op_type for n in kept if {"log_probs", "eos_log_prob"} & set(n.input)]
    if readers or len(eos) != 1:
        raise ShortlistError(
            f"the decoder step's log_probs are read by {', '.join(readers)}" if readers
            else "the decoder step's eos_log_prob is not a Gather of its log_probs"
        )  # fmt: skip
    if logits != STEP_LOGITS:
        if any(STEP_LOGITS in n.output for n in kept) or any(i.name == STEP_LOGITS for i in graph.input):
            raise ShortlistError(f"the decoder step already has a tensor named {STEP_LOGITS}")
        _rename_as_outputs(graph, {logits: (STEP_LOGITS, TensorProto.FLOAT, ["batch", "shortlist"])})
    else:
        graph.output.append(helper.make_tensor_value_info(STEP_LOGITS, TensorProto.FLOAT, ["batch", "shortlist"]))
    for listed in (graph.output, graph.value_info):
        for info in [i for i in listed if i.name in ("log_probs", "eos_log_prob")]:
            listed.remove(info)
    return kept


def _expose_projection_rows(
    graph: onnx.GraphProto, node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]
) -> None:
    """Give an int8 projection's input rows as step outputs, under PROJECTION_CODES and
    PROJECTION_ROW_SCALE, where they are quantized per row as export/quantize.py does (codes of a
    QuantizeLinear at zero point 128, each row's scale from a ReduceMax): the runtime then makes
    small batches' projections itself (service/runtime/projection.py). Left as it is otherwise."""
    codes, row_scale, zero_point = node.input[0], node.input[2], node.input[4] if len(node.input) > 4 else ""
    point = _constant(graph, zero_point) if zero_point else None
    quantized, ranged = producers.get(codes), producers.get(row_scale)
    if (
        point is None
        or point.dtype != np.uint8
        or point.size != 1
        or int(point.reshape(-1)[0]) != PROJECTION_ZERO_POINT
        or quantized is None
        or quantized.op_type != "QuantizeLinear"
        or ranged is None
        or ranged.op_type != "ReduceMax"
    ):
        return
    _rename_as_outputs(graph, {codes: (PROJECTION_CODES, TensorProto.UINT8, ["batch", None]),
                               row_scale: (PROJECTION_ROW_SCALE, TensorProto.FLOAT, ["batch", 1])})  # fmt: skip


def _rename_as_outputs(graph: onnx.GraphProto, renamed: Mapping[str, tuple[str, int, list[int | str | None]]]) -> None:
    """Each tensor of the step that `renamed` names given as a step output of the new name, type and
    shape: a projection's input rows (an fp32 step's rows, an int8 one's codes and row scales), from
    which the runtime makes the projection itself (service/runtime/projection.py)."""
    names_to = {name: output for name, (output, _dtype, _shape) in renamed.items()}
    for other in graph.node:
        for names in (other.input, other.output):
            for i, name in enumerate(names):
                names[i] = names_to.get(name, name)
    for info in [info for info in graph.value_info if info.name in names_to]:
        graph.value_info.remove(info)
    graph.output.extend(
        helper.make_tensor_value_info(output, dtype, shape) for output, dtype, shape in renamed.values()
    )


def _top_k_chain(graph: onnx.GraphProto, producers: Mapping[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes that make the step's top_log_probs and top_ids from its log_probs (export/decoder_graph.py's
    blockwise top-k), which the runtime replaces (service/runtime/top_k.py): a chain that nothing else reads."""
    chain: dict[int, onnx.NodeProto] = {}
    pending = list(TOP_K_OUTPUTS)
    while pending:
        node = producers.get(pending.pop())
        if node is not None and "log_probs" not in node.output and id(node) not in chain:
            chain[id(node)] = node
            pending.extend(node.input)
    made = {out for node in chain.values() for out in node.output} - set(TOP_K_OUTPUTS)
    outside = [n for n in graph.node if id(n) not in chain and made & set(n.input)]
    reads_scores = any("log_probs" in node.input for node in chain.values())
    if outside or not reads_scores or not all(name in producers for name in TOP_K_OUTPUTS):
        raise ShortlistError("the decoder step's top-k is not a chain of its own from log_probs")
    return list(chain.values())


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node reads, in the graph and in its nodes' branches."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                names |= _read_names(attribute.g)
    return names


def _checked_tokens(pairs: Iterable[tuple[Sequence[int], Sequence[int]]], vocab_size: int) -> Iterable[
        tuple[Sequence[int], Sequence[int]]]:  # fmt: skip
    for source, target in pairs:
        if any(not 0 <= i < vocab_size for i in (*source, *target)):
            raise ShortlistError(f"a training pair has token ids outside the vocabulary of {vocab_size}")
        yield source, target


def add_shortlist(
    model_dir: Path,
    pairs_by_target: Mapping[str, Iterable[tuple[Sequence[int], Sequence[int]]]],
    size: int,
) -> dict[str, object]:
    """Give `model_dir` a shortlist of `size` tokens per sentence, the lexical table of each target
    language built from its (source ids, target ids) pairs. Rewrites the decoder step, the weights
    file and the manifest; returns a report."""
    manifest = load_manifest(model_dir)
    vocab = manifest.vocab_size
    if "output_layer" in manifest.files:
        raise ShortlistError(f"{model_dir} already has a shortlist ({manifest.files['output_layer']})")
    if not DECODER_TOP_K <= size < vocab:
        raise ShortlistError(
            f"the shortlist size must lie in {DECODER_TOP_K}..{vocab - 1} (top-k to vocabulary), got {size}"
        )
    unknown = sorted(set(pairs_by_target) - set(manifest.languages))
    if unknown:
        raise ShortlistError(f"pairs into {', '.join(unknown)}: not a language of {model_dir}")
    tables = {lang: LexicalTable.build(_checked_tokens(p, vocab), vocab) for lang, p in pairs_by_target.items()}
    decoder = model_dir / manifest.files["decoder"]
    step = onnx.load(str(decoder), load_external_data=True)
    layer = rewrite_output_layer(step, vocab)
    graphs = [manifest.files[role] for role in ("encoder", "decoder", "mlm_head") if role in manifest.files]
    # every graph inline, then one weights file again without the projection (share_weights)
    loaded = {name: step if name == decoder.name else onnx.load(str(model_dir / name), load_external_data=True)
              for name in graphs}  # fmt: skip
    for name, graph in loaded.items():
        for init in graph.graph.initializer:
            init.ClearField("external_data")
            init.data_location = TensorProto.DEFAULT
        onnx.save(graph, str(model_dir / name))
    share_weights(model_dir, graphs, vocab)
    arrays: dict[str, np.ndarray] = {
        "weight": layer.weight,
        "vocab_axis": np.array(layer.vocab_axis),
        "size": np.array(size),
        "block": np.array(layer.block),
        "k_blocks": np.array(layer.k_blocks),
    }
    if layer.scale is not None:
        arrays["scale"] = layer.scale
    if layer.bias is not None:
        arrays["bias"] = layer.bias
    for lang, table in tables.items():
        index_type = np.int16 if vocab <= np.iinfo(np.int16).max else np.int32
        arrays[LEXICAL_PREFIX + lang] = table.translations.astype(index_type)
        arrays[FREQUENT_PREFIX + lang] = table.frequent.astype(index_type)
    with open(model_dir / OUTPUT_LAYER_FILE, "wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)
    files = {**manifest.files, "output_layer": OUTPUT_LAYER_FILE}
    hashes = {name: sha256_file(model_dir / name) for name in files.values()}
    updated = Manifest.model_validate({**manifest.model_dump(), "files": files, "sha256": hashes})
    (model_dir / MANIFEST_FILE).write_text(updated.model_dump_json(indent=2) + "\n")
    report: dict[str, object] = {
        "shortlist_size": size,
        "languages": sorted(tables),
        "output_layer_bytes": (model_dir / OUTPUT_LAYER_FILE).stat().st_size,
    }
    exported = model_dir / REPORT_FILE
    if exported.is_file():  # the directory's record of how it was made
        record = json.loads(exported.read_text())
        exported.write_text(json.dumps({**record, "shortlist": report}, indent=2) + "\n")
    return report


def config_pairs(data: DataConfig, data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Target language -> (source, target) sentences: the training pairs of a config's corpora,
    held-out sentences left out, each pair both ways."""
    held = corpus.held_sentences(data, data_dir)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for entry in data.corpora:
        if entry.weight <= 0:
            continue
        source_lang, target_lang = entry.langs
        for pair in corpus.training_pairs(entry, data_dir, held):
            pairs.setdefault(target_lang, []).append((pair.src, pair.tgt))
            pairs.setdefault(source_lang, []).append((pair.tgt, pair.src))
    if not pairs:
        raise ShortlistError("the training config has no corpus of pairs")
    return pairs


def shortlist_from_text(
    model_dir: Path, pairs_by_target: Mapping[str, Sequence[tuple[str, str]]], size: int
) -> dict[str, object]:
    """add_shortlist from sentence pairs, tokenized as the model's tokenizer reads a source and
    writes a target."""
    from service.runtime_cli import translation_progress

    tokenizer = load_text_tokenizer(model_dir, load_manifest(model_dir))

    def tokenized(lang: str, pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[list[int], list[int]]]:
        with translation_progress(len(pairs), "pair", f"table into {lang}", PROGRESS_HIDDEN_UP_TO) as advance:
            for done, (source, target) in enumerate(pairs, 1):
                yield tokenizer.encode(source), tokenizer.encode_target(target)
                if done % PROGRESS_EVERY == 0 or done == len(pairs):
                    advance(done, len(pairs))

    report = add_shortlist(model_dir, {lang: tokenized(lang, p) for lang, p in pairs_by_target.items()}, size)
    report["pairs"] = {lang: len(pairs) for lang, pairs in pairs_by_target.items()}
    few = sorted(lang for lang, pairs in pairs_by_target.items() if len({s for s, _ in pairs}) < FEW_SENTENCES)
    if few:
        report["warning"] = (
            f"under {FEW_SENTENCES:,} source sentences into {', '.join(few)}: a table from fewer ranks rare "
            "tokens' translations less well and costs more BLEU (docs/BENCHMARKS.md)"
        )
    return report


def translated_pairs(
    model_dir: Path, sources_by_language: Mapping[str, Sequence[str]], threads: int = 0
) -> dict[str, list[tuple[str, str]]]:
    """Target language -> (source, translation) pairs: the model's own translations (its whole
    vocabulary, its own decoding options) of each language's sentences into every language it
    translates that one into. For a model without parallel text at hand, such as an Argos package."""
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator
    from service.runtime_cli import translation_progress

    translator = Translator.load(model_dir, threads, packed=False)
    options = DecodeOptions.from_generation(translator.model.manifest.generation, n_best=TRANSLATIONS_PER_SENTENCE)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for source_lang, texts in sources_by_language.items():
        targets = translator.languages.targets(source_lang)
        if not targets:
            raise ShortlistError(f"sentences in {source_lang}: {model_dir} translates nothing from {source_lang}")
        texts = [t for t in texts if t.strip()]
        for target in targets:
            with translation_progress(len(texts), "sentence", f"{source_lang}->{target}") as advance:
                outputs = translator.translate(texts, target, options, progress=advance)
            found = [(text, h.text) for text, hyps in zip(texts, outputs, strict=True) for h in hyps if h.text]
            pairs.setdefault(target, []).extend(found)
    return pairs


def own_text(
    directions: Sequence[tuple[str, str]],
    parallel: Mapping[tuple[str, str], Sequence[tuple[str, str]]],
    monolingual: Mapping[str, Sequence[str]],
) -> tuple[dict[tuple[str, str], Sequence[tuple[str, str]]], dict[str, Sequence[str]]]:
    """The part of an import's text that belongs to a model of these directions: the pairs of its
    own directions, and the sentences in the languages it translates from."""
    sources = {source for source, _ in directions}
    return (
        {direction: found for direction, found in parallel.items() if direction in directions},
        {lang: texts for lang, texts in monolingual.items() if lang in sources},
    )


def shortlist_imported(
    model_dir: Path,
    size: int,
    parallel: Mapping[tuple[str, str], Sequence[tuple[str, str]]],
    monolingual: Mapping[str, Sequence[str]],
) -> dict[str, object]:
    """shortlist_from_text for a model just imported, from the text given for a whole import: the
    pairs of its own directions (`parallel`: (source, target) language -> sentence pairs), and its own
    translations of the sentences in the languages it translates from (`monolingual`). Text in other
    languages is another package's. Raises ShortlistError where none of the text is this model's."""
    directions = load_manifest(model_dir).model_languages().directions
    own_pairs, own_sources = own_text(directions, parallel, monolingual)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for (_, target), found in own_pairs.items():
        pairs.setdefault(target, []).extend(found)
    if own_sources:
        for target, found in translated_pairs(model_dir, own_sources).items():
            pairs.setdefault(target, []).extend(found)
    if not pairs:
        offered = ", ".join(f"{s}-{t}" for s, t in directions)
        raise ShortlistError(f"no shortlist text for its directions ({offered})")
    return shortlist_from_text(model_dir, pairs, size)
