"""`mtserve import ctranslate2`: a CTranslate2 Transformer directory -> an mtserve model directory.

Load, validate, convert, check, as CTranslate2's own converters do, the other way round:
- export/ct2_model.py reads the files (binary versions 3 to 6, aliases, every storage type);
- the variables are renamed from the TransformerSpec revision that wrote them (3 to 7: scalars at
  the top level or under encoder/ and decoder/, `embeddings` or `embeddings_0`), and every
  variable must be one this network implements: relative positions, rotary, alibi, multi-query
  attention, several source embeddings, a layer norm on the embeddings are errors naming it;
- the weights become model/transformer.py's network (pre-norm with final norms, or post-norm;
  ReLU, GELU or swish; the stored position table as it is; tied or
  separate embeddings and projection, the projection's bias), and the exporter writes and
  validates the graphs as for any mtserve model.

Both families found in Argos Translate packages are covered: OpenNMT-py models (pre-norm, ReLU)
and OPUS-MT models through CTranslate2's Marian converter (post-norm, swish, a zero embedding as
the decoder's first input, EOS after the source).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.ct2_model import CT2FormatError, CT2Model, read_ct2_dir
from export.network import Network, WeightError, network_from_state
from export.writer import Check, Conventions, runtime_check, write_model
from model.config import ModelConfig
from service.graphs import MAX_BEAM
from service.languages import ModelLanguages
from service.manifest import Generation, SpecialIds, TokenizerSpec

log = logging.getLogger("mtserve.import")

SPEC_REVISIONS = range(3, 8)
SPEC_NAME = "TransformerSpec"
# CTranslate2's activation enum; GELU with the tanh approximation (1) is not this network's GELU
ACTIVATIONS = {0: "relu", 2: "swish", 3: "gelu"}
ACTIVATION_NAMES = {1: "GELUTanh", 4: "GELUSigmoid", 5: "Tanh", 6: "Sigmoid"}
# Scalars this reader knows, with the values it can serve (None: any value)
SCALARS: dict[str, set[int] | None] = {
    "num_heads": None,
    "pre_norm": None,
    "activation": None,
    "scale_embeddings": None,
    "multiply_by_sqrt_depth": None,
    "start_from_zero_embedding": None,
    "alignment_layer": None,
    "alignment_heads": None,
    "embeddings_merge": None,
    "layernorm_embedding": {0},
    "with_relative_position": {0},
    "alibi": {0},
    "alibi_use_positive_positions": None,
    "scale_alibi": None,
    "multi_query_attention": {0},
    "with_source_bos": None,
    "with_source_eos": None,
    "with_target_bos": None,
    "sliding_window": {0},
}
TEXT_ATTRIBUTES = {"unk_token", "bos_token", "eos_token"}
UNSUPPORTED_PARTS = {
    "relative_position": "relative positions",
    "relative_attention_bias": "relative attention bias",
    "rotary": "rotary positions",
    "layernorm_embedding": "a layer norm on the embeddings",
    "embeddings_1": "several source embeddings",
    "project_in": "input projections",
    "project_out": "output projections",
    "final_logit_softcapping": "logit soft-capping",
    "scale_outputs": "scaled outputs",
}
LAYER_NORM_EPS = 1e-5  # CTranslate2's value where config.json's layer_norm_epsilon is null or absent
PAD_TOKENS = ("<blank>", "<pad>")
# argostranslate's decoding of Argos packages: beam 4, CTranslate2's length penalty 0.2, 256 tokens,
# CTranslate2's default of at least one token before EOS, and unknown tokens replaced from the source
ARGOS_GENERATION = Generation(beam_size=4, length_penalty=0.2, max_length=256, min_length=1, repetition_guard=False,
                              cut_degenerate=False, replace_unknowns=True)  # fmt: skip
CHECK_SENTENCES = ("Hello, world.", "The committee will meet again on Tuesday.", "Where is the station?")


class CT2ImportError(ValueError):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


@dataclass(frozen=True)
class Tokens:
    """How the runtime speaks to the model: the source's markers and the decoder's first token."""

    source_bos: int | None  # put before every source (config add_source_bos)
    source_eos: bool  # EOS after every source (config add_source_eos)
    decoder_start: int  # the decoder's first input
    zero_start: bool  # the first input's embedding is zeros (start_from_zero_embedding): an extra row
    special: SpecialIds
    decoder_prefix: tuple[int, ...] = ()  # forced after the first input (a target_prefix after the start token)


class _Names:
    """Variables by their current (revision 7) names, whatever revision wrote them; each array used is
    ticked off, so that any left over is one this network does not implement (scalar attributes are
    checked by _check_spec)."""

    def __init__(self, model: CT2Model) -> None:
        self.model = model
        self.used: set[str] = set()

    def scalar(self, side: str, name: str, default: int) -> int:
        for candidate in (f"{side}/{name}", name):
            value = self.model.scalar(candidate)
            if value is not None:
                return value
        return default

    def weight(self, *names: str) -> np.ndarray:
        for name in names:
            if self.model.has(name):
                self.used.update({name, name + "_scale"})
                return self.model.weight(name)
        raise CT2ImportError(f"model.bin variable {names[0]}", "missing")

    def optional(self, name: str) -> np.ndarray | None:
        return self.weight(name) if self.model.has(name) else None

    def leftovers(self) -> list[str]:
        return sorted(
            n for n, v in self.model.variables.items()
            if n not in self.used and v.array.ndim > 0 and n.rsplit("/", 1)[-1] not in TEXT_ATTRIBUTES
        )  # fmt: skip


def _check_spec(model: CT2Model) -> None:
    if model.spec_name != SPEC_NAME:
        raise CT2ImportError("model.bin", f"spec {model.spec_name!r}: only {SPEC_NAME} (encoder-decoder) is imported")
    if model.spec_revision not in SPEC_REVISIONS:
        raise CT2ImportError("model.bin", f"{SPEC_NAME} revision {model.spec_revision}; this reader takes 3 to 7")
    for name, var in model.variables.items():
        for part, what in UNSUPPORTED_PARTS.items():
            if part in name and var.array.ndim > 0:
                raise CT2ImportError(f"model.bin variable {name}", f"{what}: not implemented by this network")
        base = name.rsplit("/", 1)[-1]
        if var.array.ndim == 0 and base not in TEXT_ATTRIBUTES:
            if base not in SCALARS:
                raise CT2ImportError(f"model.bin variable {name}", "an attribute this importer does not know")
            allowed = SCALARS[base]
            if allowed is not None and int(var.array) not in allowed:
                raise CT2ImportError(f"model.bin variable {name}", f"{int(var.array)}: not implemented by this network")
    if model.config.get("multi_query_attention"):
        raise CT2ImportError("config.json multi_query_attention", "multi-query attention is not implemented")


def _positions(names: _Names) -> np.ndarray:
    """The stored position table [rows, D], which the graphs add as CTranslate2 adds it."""
    tables = [names.optional(f"{side}/position_encodings/encodings") for side in ("encoder", "decoder")]
    if any(t is None for t in tables):
        raise CT2ImportError(
            "model.bin variable encoder/position_encodings/encodings",
            "missing: positions CTranslate2 computes itself (from 1, in TensorFlow's form) are not implemented",
        )
    encoder, decoder = tables[0], tables[1]
    assert encoder is not None and decoder is not None
    # equal up to rounding, as before the table was read rather than recomputed: one copy serves both
    if encoder.shape != decoder.shape or not np.allclose(encoder, decoder, atol=1e-5):
        raise CT2ImportError("model.bin variable decoder/position_encodings/encodings", "differs from the encoder's")
    return encoder


def _linear(state: dict[str, np.ndarray], prefix: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    state[prefix + ".weight"] = np.ascontiguousarray(weight)
    state[prefix + ".bias"] = np.ascontiguousarray(bias if bias is not None else np.zeros(weight.shape[0], np.float32))


def _norm(state: dict[str, np.ndarray], prefix: str, names: _Names, name: str) -> None:
    state[prefix + ".weight"] = names.weight(name + "/gamma")
    state[prefix + ".bias"] = names.weight(name + "/beta")


def _fused(names: _Names, name: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    weight, bias = names.weight(name + "/weight"), names.optional(name + "/bias")
    if weight.shape[0] % parts:
        raise CT2ImportError(f"model.bin variable {name}/weight", f"{weight.shape[0]} rows do not split in {parts}")
    biases: list[np.ndarray | None] = list(np.split(bias, parts)) if bias is not None else [None] * parts
    return np.split(weight, parts), biases


def _layers(names: _Names, state: dict[str, np.ndarray], side: str, count: int) -> None:
    for i in range(count):
        src, dst = f"{side}/layer_{i}", f"{side}.{i}"
        (q, k, v), (qb, kb, vb) = _fused(names, f"{src}/self_attention/linear_0", 3)
        for proj, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            _linear(state, f"{dst}.self_attn.{proj}", w, b)
        _linear(state, f"{dst}.self_attn.out_proj", names.weight(f"{src}/self_attention/linear_1/weight"),
                names.optional(f"{src}/self_attention/linear_1/bias"))  # fmt: skip
        _norm(state, f"{dst}.{'attn_res' if side == 'encoder' else 'self_res'}.norm", names,
              f"{src}/self_attention/layer_norm")  # fmt: skip
        if side == "decoder":
            _linear(state, f"{dst}.cross_attn.q_proj", names.weight(f"{src}/attention/linear_0/weight"),
                    names.optional(f"{src}/attention/linear_0/bias"))  # fmt: skip
            (k, v), (kb, vb) = _fused(names, f"{src}/attention/linear_1", 2)
            _linear(state, f"{dst}.cross_attn.k_proj", k, kb)
            _linear(state, f"{dst}.cross_attn.v_proj", v, vb)
            _linear(state, f"{dst}.cross_attn.out_proj", names.weight(f"{src}/attention/linear_2/weight"),
                    names.optional(f"{src}/attention/linear_2/bias"))  # fmt: skip
            _norm(state, f"{dst}.cross_res.norm", names, f"{src}/attention/layer_norm")
        _linear(state, f"{dst}.ffn.net.0", names.weight(f"{src}/ffn/linear_0/weight"),
                names.optional(f"{src}/ffn/linear_0/bias"))  # fmt: skip
        _linear(state, f"{dst}.ffn.net.2", names.weight(f"{src}/ffn/linear_1/weight"),
                names.optional(f"{src}/ffn/linear_1/bias"))  # fmt: skip
        _norm(state, f"{dst}.ffn_res.norm", names, f"{src}/ffn/layer_norm")


def _embedding_scale(model: CT2Model, d_model: int) -> bool:
    """Whether embeddings are multiplied by √d_model: a flag (revisions 3 to 6), or the factor itself
    as a float (what newer converters write); any other factor is not this network's."""
    for name in ("encoder/scale_embeddings", "scale_embeddings", "encoder/embeddings/multiply_by_sqrt_depth"):
        if not model.has(name):
            continue
        var = model.variables[name]
        value = float(var.array.reshape(-1)[0])
        if var.dtype not in ("float32", "float16"):
            return bool(value)
        if abs(value - d_model**0.5) < 1e-3:
            return True
        if abs(value - 1.0) < 1e-6:
            return False
        raise CT2ImportError(f"model.bin variable {name}", f"{value:g}: embeddings scaled by neither √d_model nor 1")
    return True


def _count_layers(model: CT2Model, side: str) -> int:
    count = 0
    while any(n.startswith(f"{side}/layer_{count}/") for n in model.variables):
        count += 1
    if not count:
        raise CT2ImportError(f"model.bin variable {side}/layer_0", "missing: no layers")
    return count


def _padded(table: np.ndarray, rows: int) -> np.ndarray:
    return (
        table
        if table.shape[0] == rows
        else np.concatenate([table, np.zeros((rows - table.shape[0], table.shape[1]), table.dtype)])
    )


def _token_id(vocabulary: Sequence[str], token: str, what: str) -> int:
    try:
        return vocabulary.index(token)
    except ValueError:
        raise CT2ImportError(what, f"{token!r} is not in the vocabulary") from None


def convert(model: CT2Model, target_prefix: str | None = None) -> tuple[Network, dict[str, np.ndarray], Tokens]:
    """The network, its weights under model/transformer.py's names, and how its tokens are used."""
    _check_spec(model)
    names = _Names(model)
    heads = names.scalar("encoder", "num_heads", 8)
    pre_norm = bool(names.scalar("encoder", "pre_norm", 1))
    code = names.scalar("encoder", "activation", 0)
    if code not in ACTIVATIONS:
        raise CT2ImportError("model.bin variable encoder/activation",
                             f"{ACTIVATION_NAMES.get(code, code)}: not implemented by this network")  # fmt: skip
    zero_start = bool(names.scalar("decoder", "start_from_zero_embedding", 0))
    source_embedding = names.weight("encoder/embeddings_0/weight", "encoder/embeddings/weight")
    target_embedding = names.weight("decoder/embeddings/weight")
    projection = names.weight("decoder/projection/weight")
    projection_bias = names.optional("decoder/projection/bias")
    source_vocab, target_vocab = model.source_vocabulary, model.target_vocabulary
    for what, table, vocab in (("encoder/embeddings_0/weight", source_embedding, source_vocab),
                               ("decoder/embeddings/weight", target_embedding, target_vocab)):  # fmt: skip
        if table.shape[0] != len(vocab):
            raise CT2ImportError(f"model.bin variable {what}",
                                 f"{table.shape[0]} rows for a vocabulary of {len(vocab)} tokens")  # fmt: skip
    d_model = target_embedding.shape[1]
    scale = _embedding_scale(model, d_model)
    positions = _positions(names)
    if positions.shape[1] != d_model:
        raise CT2ImportError("model.bin variable encoder/position_encodings/encodings",
                             f"{positions.shape[1]} wide for a model {d_model} wide")  # fmt: skip
    encoder_layers, decoder_layers = _count_layers(model, "encoder"), _count_layers(model, "decoder")
    d_ff = names.weight("encoder/layer_0/ffn/linear_0/weight").shape[0]

    # One vocabulary size for both sides; an extra zero row as the first input where the model starts from zeros.
    vocab_size = max(len(source_vocab), len(target_vocab)) + int(zero_start)
    unk = str(model.config.get("unk_token") or "<unk>")
    eos_token = str(model.config.get("eos_token") or "</s>")
    eos = _token_id(target_vocab, eos_token, "config.json eos_token")
    pad = next((target_vocab.index(t) for t in PAD_TOKENS if t in target_vocab), target_vocab.index(unk))
    start_token = model.config.get("decoder_start_token")
    # As CTranslate2 decodes: the start token (none where config.json says null), then the target prefix.
    # A start from zeros replaces the first token's embedding by a row of zeros (an extra row here).
    forced = [_token_id(target_vocab, target_prefix, "target_prefix")] if target_prefix else []
    if start_token is not None:
        start = _token_id(target_vocab, str(start_token), "config.json decoder_start_token")
    elif forced:
        start = forced.pop(0)
    elif not zero_start:
        raise CT2ImportError("config.json decoder_start_token", "null, and no target prefix gives the first token")
    if zero_start:
        start = vocab_size - 1
    source_bos = None
    if model.config.get("add_source_bos"):
        source_bos = _token_id(source_vocab, str(model.config.get("bos_token") or "<s>"), "config.json bos_token")
    never = sorted({*range(len(target_vocab), vocab_size)})  # padding rows and the zero start never come out

    shared = source_embedding.shape == target_embedding.shape and np.array_equal(source_embedding, target_embedding)
    tied = projection.shape == target_embedding.shape and np.array_equal(projection, target_embedding)
    eps = model.config.get("layer_norm_epsilon")
    # The attention replace_unknowns reads: CTranslate2's defaults are the last layer's first head,
    # and 0 heads means all of them.
    alignment_layer = names.scalar("decoder", "alignment_layer", -1)
    alignment_heads = names.scalar("decoder", "alignment_heads", 1) or heads
    if not -decoder_layers <= alignment_layer < decoder_layers or not 0 < alignment_heads <= heads:
        raise CT2ImportError("model.bin variable decoder/alignment_layer",
                             f"layer {alignment_layer}, {alignment_heads} heads: not within the decoder's "
                             f"{decoder_layers} layers of {heads} heads")  # fmt: skip
    cfg = ModelConfig(
        vocab_size=vocab_size, d_model=d_model, n_heads=heads, d_ff=d_ff, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, dropout=0.0, pre_norm=pre_norm, max_positions=positions.shape[0],
        activation=ACTIVATIONS[code],  # type: ignore[arg-type]
        scale_embedding=bool(scale),
        shared_embeddings=shared, tied_output=tied, output_bias=projection_bias is not None,
        layer_norm_eps=LAYER_NORM_EPS if eps is None else float(eps), mlm_head=False, pad_id=pad, eos_id=eos,
        never_generate=tuple(never), alignment_layer=alignment_layer, alignment_heads=alignment_heads,
    )  # fmt: skip
    state: dict[str, np.ndarray] = {"embed.weight": _padded(target_embedding, vocab_size)}
    if not shared:
        state["src_embed.weight"] = _padded(source_embedding, vocab_size)
    if not tied:
        state["output_proj.weight"] = _padded(projection, vocab_size)
    if projection_bias is not None:
        padding = np.zeros(vocab_size - len(projection_bias), np.float32)
        state["logits_bias"] = np.concatenate([projection_bias, padding])
    _layers(names, state, "encoder", encoder_layers)
    _layers(names, state, "decoder", decoder_layers)
    if pre_norm:
        _norm(state, "encoder_norm", names, "encoder/layer_norm")
        _norm(state, "decoder_norm", names, "decoder/layer_norm")
    left = names.leftovers()
    if left:
        raise CT2ImportError(f"model.bin variable {left[0]}", "not part of the network this importer builds")
    bos = model.config.get("bos_token")
    special = SpecialIds(pad=pad, unk=target_vocab.index(unk), eos=eos,
                         bos=target_vocab.index(bos) if bos in target_vocab else None)  # fmt: skip
    tokens = Tokens(source_bos, bool(model.config.get("add_source_eos")), start, zero_start, special, tuple(forced))
    try:
        network = network_from_state(cfg, state, positions)
    except WeightError as exc:
        raise CT2ImportError(f"weights {exc.name}", exc.problem) from None
    return network, state, tokens


def write_vocabularies(out: Path, model: CT2Model) -> dict[str, Path]:
    """vocab.json (source pieces -> ids) and, when the vocabularies differ, target_vocab.json."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"vocab": out / "vocab.json"}
    files["vocab"].write_text(json.dumps({p: i for i, p in enumerate(model.source_vocabulary)}, ensure_ascii=False))
    if not model.shared_vocabulary and model.source_vocabulary != model.target_vocabulary:
        files["target_vocab"] = out / "target_vocab.json"
        files["target_vocab"].write_text(
            json.dumps({p: i for i, p in enumerate(model.target_vocabulary)}, ensure_ascii=False)
        )
    return files


def import_ctranslate2(
    ct2_dir: Path,
    out: Path,
    source: str,
    target: str,
    source_spm: Path,
    target_spm: Path | None = None,
    target_prefix: str | None = None,
    precision: str = "fp32",
    generation: Generation = ARGOS_GENERATION,
    origin: str = "ctranslate2",
    check_sentences: Sequence[str] = CHECK_SENTENCES,
    calibration_text: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Read, check, convert, export and validate. Returns the export report. At int8,
    `calibration_text` (source language -> sentences) gives the activations constant scales."""
    import sentencepiece as spm

    from service.runtime.text_tokenizer import VocabTokenizer

    for what, path in (("--spm", source_spm), ("--target-spm", target_spm)):
        if path is not None and not path.is_file():
            raise CT2ImportError(f"{what} {path}", "missing")
    try:
        model = read_ct2_dir(ct2_dir)
    except CT2FormatError as exc:
        raise CT2ImportError(exc.piece, str(exc).removeprefix(exc.piece + ": ")) from None
    if generation.beam_size > MAX_BEAM:
        raise CT2ImportError("generation", f"beam {generation.beam_size} is over {MAX_BEAM}")
    network, state, tokens = convert(model, target_prefix)
    cfg = network.cfg
    # no output may run past the stored position table (CTranslate2 stops with an error there)
    generation = generation.model_copy(update={"max_length": min(generation.max_length or 256, cfg.max_positions)})
    try:
        spm.SentencePieceProcessor(model_file=str(source_spm))
    except (OSError, RuntimeError) as exc:
        raise CT2ImportError(f"--spm {source_spm}", f"not a SentencePiece model ({exc})") from None
    vocab_files = write_vocabularies(out, model)
    tokenizer_files = {"source_tokenizer": source_spm, "target_tokenizer": target_spm or source_spm, **vocab_files}
    languages = ModelLanguages((source, target), {target: tokens.decoder_start}, ((source, target),))
    skip = [tokens.special.pad, tokens.special.eos, tokens.special.unk, *cfg.never_generate]
    tokenizer = VocabTokenizer(source_spm, target_spm or source_spm, vocab_files["vocab"], tokens.special.unk, skip,
                               vocab_files.get("target_vocab"))  # fmt: skip
    prefix = [tokens.source_bos] if tokens.source_bos is not None else []
    suffix = [tokens.special.eos] if tokens.source_eos else []
    unprefixed = [[*tokenizer.encode(s), *suffix] for s in check_sentences]  # the validator adds the prefix
    conventions = Conventions(
        languages=languages,
        special_ids=tokens.special,
        tokenizer_files=tokenizer_files,
        tokenizer=TokenizerSpec(kind="vocab"),
        decoder_start={target: tokens.decoder_start},
        source_prefix={target: prefix} if prefix else {},
        decoder_prefix={target: list(tokens.decoder_prefix)} if tokens.decoder_prefix else {},
        source_eos=tokens.source_eos,
        generation=generation,
        origin=origin,
    )
    extra = {"ct2_dir": str(ct2_dir.resolve()), "binary_version": model.binary_version,
             "spec_revision": model.spec_revision}  # fmt: skip
    probe = [[*prefix, *ids] for ids in unprefixed]
    check = _check(network, state, probe, unprefixed)
    extra["reference"] = "pytorch" if check is not None else None
    report = write_model(
        network, conventions, out, precision, check or runtime_check(unprefixed), None, extra, calibration_text
    )
    log.info("imported %s to %s", ct2_dir, out)
    return report


def _check(
    network: Network, state: dict[str, np.ndarray], probe: Sequence[Sequence[int]], sources: Sequence[Sequence[int]]
) -> Check | None:
    """Where torch is installed, the graphs are checked against the same weights in PyTorch, as an
    export is; without it (the service's image) the runtime's own check applies."""
    try:
        from export.exporter import reference_module
        from export.validate import pytorch_check
    except ImportError:
        log.info("no torch: the graphs are checked by the runtime alone, not against PyTorch")
        return None
    return pytorch_check(reference_module(network.cfg, state, network.positions), probe, sources)
