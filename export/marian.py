"""`mtserve import marian`: a local Hugging Face Marian (OPUS-MT) directory -> an mtserve model directory.

Load, validate, convert, check, as CTranslate2's converters do:
- every file and configuration field is checked first; what is not handled is an error naming
  the field and its value (an unknown activation, a pre-norm or embedding layer-norm variant,
  learned positions, separate vocabularies);
- the weights become model/transformer.py's network, configured as Marian's (post-norm, its
  activation, its embedding scale, its sinusoid layout, its logits bias, its embedding sharing);
- the exporter writes and validates the graphs as for any mtserve model; where transformers is
  installed, the converted network is also checked against transformers' own forward pass.
Nothing is downloaded: the directory is whatever `git clone` or `huggingface-cli download` left.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from export.exporter import export_network
from export.writer import Conventions
from model.config import ModelConfig
from model.transformer import Transformer
from service.graphs import MAX_BEAM
from service.languages import ModelLanguages, lingua_language
from service.manifest import Generation, SpecialIds, TokenizerSpec
from service.runtime.text_tokenizer import VocabTokenizer

log = logging.getLogger("mtserve.import")

REQUIRED_FILES = ("config.json", "source.spm", "target.spm", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}
# Legacy BART switches that older Marian configs still carry: true means a layer-norm or
# position variant this network does not have.
MUST_BE = {
    "normalize_before": False,
    "normalize_embedding": False,
    "add_final_layer_norm": False,
    "static_position_embeddings": True,
}
LANGUAGE_TOKEN = re.compile(r"^>>(.+)<<$")
# A source piece missing from vocab.json becomes <unk>; more than this share means the files do not belong together.
MAX_MISSING_PIECES = 0.01
CHECK_SENTENCES = (
    "Hello, world.",
    "The committee will meet again on Tuesday to discuss the budget.",
    "She bought three apples and a loaf of bread.",
    "Where is the nearest train station?",
)


class MarianImportError(ValueError):
    """The directory lacks a file, or holds something the conversion does not handle."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


@dataclass(frozen=True)
class MarianDir:
    path: Path
    config: dict[str, Any]
    generation: dict[str, Any]
    tokenizer_config: dict[str, Any]
    vocab: dict[str, int]
    weights: Path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MarianImportError(path.name, f"cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MarianImportError(path.name, "is not a JSON object")
    return data


def read_marian_dir(path: Path) -> MarianDir:
    if not path.is_dir():
        raise MarianImportError(str(path), "is not a directory")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise MarianImportError(name, f"missing from {path}")
    weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise MarianImportError(" or ".join(WEIGHT_FILES), f"missing from {path}: no weights")
    optional = {n: _read_json(path / n) if (path / n).is_file() else {} for n in
                ("generation_config.json", "tokenizer_config.json")}  # fmt: skip
    vocab = _read_json(path / "vocab.json")
    if not all(isinstance(i, int) for i in vocab.values()):
        raise MarianImportError("vocab.json", "maps pieces to something other than integer ids")
    return MarianDir(
        path,
        _read_json(path / "config.json"),
        optional["generation_config.json"],
        optional["tokenizer_config.json"],
        vocab,
        weights,
    )


def _field(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = config.get(name, default)
    if value is None:
        raise MarianImportError("config.json", f"{name} is missing")
    return value


def _same(config: Mapping[str, Any], a: str, b: str) -> Any:
    if config.get(a) != config.get(b):
        raise MarianImportError(
            "config.json", f"{a}={config.get(a)!r} differs from {b}={config.get(b)!r}: not handled, they must match"
        )
    return _field(config, a)


def hf_tokenizer(hf_dir: Path, side: str = "source") -> VocabTokenizer:
    """The directory's text and ids as MarianTokenizer maps them: `side`'s SentencePiece model
    encodes (source for inputs, target for training labels), the target one decodes; unk, pad and
    EOS ids from vocab.json."""
    vocab = _read_json(hf_dir / "vocab.json")
    if "<unk>" not in vocab:
        raise MarianImportError("vocab.json", "has no <unk>")
    specials = [vocab[p] for p in ("<pad>", "</s>", "<unk>") if p in vocab]
    return VocabTokenizer(
        hf_dir / f"{side}.spm", hf_dir / "target.spm", hf_dir / "vocab.json", vocab["<unk>"], specials
    )


def check_config(src: MarianDir) -> None:
    """Every field the conversion depends on, checked before any weight is read."""
    config = src.config
    model_type = config.get("model_type")
    if model_type != "marian":
        raise MarianImportError("config.json", f"model_type={model_type!r} is not 'marian'")
    activation = config.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise MarianImportError(
            "config.json", f"activation_function={activation!r} is not handled (handled: {', '.join(ACTIVATIONS)})"
        )
    for name, required in MUST_BE.items():
        if name in config and bool(config[name]) != required:
            raise MarianImportError("config.json", f"{name}={config[name]!r} is not handled (only {required})")
    decoder_vocab = config.get("decoder_vocab_size")
    if decoder_vocab not in (None, config.get("vocab_size")):
        raise MarianImportError(
            "config.json", f"decoder_vocab_size={decoder_vocab} differs from vocab_size={config.get('vocab_size')}: "
            "separate source and target vocabularies are not handled",
        )  # fmt: skip
    if src.tokenizer_config.get("separate_vocabs"):
        raise MarianImportError("tokenizer_config.json", "separate_vocabs=true is not handled")
    _same(config, "encoder_attention_heads", "decoder_attention_heads")
    _same(config, "encoder_ffn_dim", "decoder_ffn_dim")


def check_vocab(src: MarianDir, vocab_size: int) -> SpecialIds:
    """The special ids vocab.json gives, checked against config.json, and vocab.json against both
    SentencePiece models."""
    vocab, config = src.vocab, src.config
    for piece in ("<unk>", "</s>", "<pad>"):
        if piece not in vocab:
            raise MarianImportError("vocab.json", f"has no {piece}")
    for piece, key in (("</s>", "eos_token_id"), ("<pad>", "pad_token_id")):
        if key in config and config[key] != vocab[piece]:
            raise MarianImportError(
                "vocab.json", f"gives {piece} id {vocab[piece]}, but config.json says {key}={config[key]}"
            )
    top = max(vocab.values())
    if top >= vocab_size or len(set(vocab.values())) != len(vocab):
        raise MarianImportError(
            "vocab.json", f"ids must be distinct and below vocab_size={vocab_size} (highest id {top})"
        )
    for name in ("source.spm", "target.spm"):
        sp = spm.SentencePieceProcessor(model_file=str(src.path / name))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
        missing = [p for p in pieces if p not in vocab]
        if len(missing) > MAX_MISSING_PIECES * max(1, len(pieces)):
            raise MarianImportError(
                "vocab.json",
                f"does not match {name}: {len(missing)} of its {len(pieces)} pieces are not in it "
                f"(first: {', '.join(repr(p) for p in missing[:5])})",
            )
    return SpecialIds(pad=vocab["<pad>"], unk=vocab["<unk>"], eos=vocab["</s>"])


def model_config(src: MarianDir, languages: ModelLanguages, never_generate: Sequence[int]) -> ModelConfig:
    config = src.config
    return ModelConfig(
        vocab_size=int(_field(config, "vocab_size")),
        d_model=int(_field(config, "d_model")),
        n_heads=int(_field(config, "encoder_attention_heads")),
        d_ff=int(_field(config, "encoder_ffn_dim")),
        encoder_layers=int(_field(config, "encoder_layers")),
        decoder_layers=int(_field(config, "decoder_layers")),
        dropout=0.0,
        pre_norm=False,
        max_positions=int(config.get("max_position_embeddings", 512)),
        languages=languages.codes,
        directions=languages.directions,
        activation=ACTIVATIONS[config.get("activation_function", "gelu")],  # type: ignore[arg-type]
        scale_embedding=bool(config.get("scale_embedding", False)),
        position_layout="halves",
        shared_embeddings=bool(config.get("share_encoder_decoder_embeddings", True)),
        tied_output=bool(config.get("tie_word_embeddings", True)),
        output_bias=True,
        mlm_head=False,
        pad_id=src.vocab["<pad>"],
        eos_id=src.vocab["</s>"],
        never_generate=tuple(sorted(set(never_generate))),
    )


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


_LAYER_PARTS = {
    "encoder": {
        "self_attn": "self_attn",
        "self_attn_layer_norm": "attn_res.norm",
        "fc1": "ffn.net.0",
        "fc2": "ffn.net.2",
        "final_layer_norm": "ffn_res.norm",
    },
    "decoder": {
        "self_attn": "self_attn",
        "self_attn_layer_norm": "self_res.norm",
        "encoder_attn": "cross_attn",
        "encoder_attn_layer_norm": "cross_res.norm",
        "fc1": "ffn.net.0",
        "fc2": "ffn.net.2",
        "final_layer_norm": "ffn_res.norm",
    },
}
_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.([a-z_0-9]+?)(\.[qkvout_]+proj)?\.(weight|bias)$")


def convert_state(
    weights: Mapping[str, torch.Tensor], cfg: ModelConfig, expected: Iterable[str]
) -> dict[str, torch.Tensor]:
    """transformers' MarianMTModel state -> model/transformer.py's, every weight accounted for;
    `expected` names the keys the network built from `cfg` holds."""
    state = {k.removeprefix("model."): v.float() for k, v in weights.items()}
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in state.items():
        match = _LAYER_KEY.match(key)
        if match:
            stack, index, part, proj, kind = match.groups()
            target = _LAYER_PARTS[stack].get(part)
            if target is not None:
                out[f"{stack}.{index}.{target}{proj or ''}.{kind}"] = value
                continue
        if key.endswith("embed_positions.weight") or key in (
            "shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight",
            "final_logits_bias",
        ):  # fmt: skip
            continue
        unused.append(key)
    if unused:
        raise MarianImportError("weights", f"not handled: {', '.join(sorted(unused)[:8])}")
    shared = state.get("shared.weight")
    decoder = state.get("decoder.embed_tokens.weight", shared)
    encoder = state.get("encoder.embed_tokens.weight", shared)
    if decoder is None or encoder is None:
        raise MarianImportError("weights", "no token embedding (shared.weight or decoder.embed_tokens.weight)")
    out["embed.weight"] = shared if cfg.shared_embeddings and shared is not None else decoder
    if not cfg.shared_embeddings:
        out["src_embed.weight"] = encoder
    if not cfg.tied_output:
        if "lm_head.weight" not in state:
            raise MarianImportError("weights", "tie_word_embeddings is false but lm_head.weight is missing")
        out["output_proj.weight"] = state["lm_head.weight"]
    bias = state.get("final_logits_bias", torch.zeros(1, cfg.vocab_size))
    out["logits_bias"] = bias.reshape(-1)
    missing = sorted(set(expected) - set(out))
    if missing:
        raise MarianImportError("weights", f"missing: {', '.join(missing[:8])}")
    return out


def _iso3(code: str) -> str | None:
    language = lingua_language(code)
    return language.iso_code_639_3.name.lower() if language else None


def language_tokens(vocab: Mapping[str, int]) -> dict[str, int]:
    """A multi-target model's target-language tokens: ">>fra<<" -> {"fra": id}."""
    return {m.group(1): i for piece, i in vocab.items() if (m := LANGUAGE_TOKEN.match(piece))}


def resolve_languages(
    src: MarianDir, source: str | None, targets: Sequence[str]
) -> tuple[ModelLanguages, dict[str, list[int]]]:
    """The model's direction(s) and, for a multi-target model, each target's source prefix token.

    Languages come from the arguments, else tokenizer_config.json's source_lang and target_lang,
    else the directory name (opus-mt-en-fr, opus-mt-tc-big-en-fr)."""
    named = re.search(r"opus-mt-(?:tc-big-|tc-)?([a-z]{2,3})-([a-z]{2,3})$", src.path.resolve().name)
    source = source or src.tokenizer_config.get("source_lang") or (named.group(1) if named else None)
    if not targets:
        target = src.tokenizer_config.get("target_lang") or (named.group(2) if named else None)
        targets = [target] if target else []
    if not source or not targets:
        raise MarianImportError(
            "languages", "not named by tokenizer_config.json or the directory name: pass --source and --target"
        )
    tokens = language_tokens(src.vocab)
    prefix: dict[str, list[int]] = {}
    if tokens:  # a multi-target model: each target asks for its own token
        for target in targets:
            token = next((c for c in (target, _iso3(target)) if c in tokens), None)
            if token is None:
                raise MarianImportError(
                    "--target", f"{target!r} has no >>{target}<< token in vocab.json (it has "
                    f"{', '.join(sorted(tokens)[:12])}…)",
                )  # fmt: skip
            prefix[target] = [tokens[token]]
    codes = tuple(dict.fromkeys([source, *targets]))
    start = int(src.config.get("decoder_start_token_id", src.vocab["<pad>"]))
    languages = ModelLanguages(codes, {t: start for t in targets}, tuple((source, t) for t in targets))
    return languages, prefix


def generation_defaults(
    src: MarianDir, special: SpecialIds, repetition_guard: bool = False
) -> tuple[Generation, list[int]]:
    """generation_config.json (config.json in older exports) -> decoding defaults, and the ids never generated.

    transformers' max_length counts the decoder's start token; mtserve's counts generated tokens.
    transformers has no repetition guard nor cut of degenerate output: both stay off unless asked."""
    gen = {**{k: v for k, v in src.config.items() if k in ("num_beams", "max_length")}, **src.generation}
    never = [special.pad]
    for sequence in gen.get("bad_words_ids") or []:
        if len(sequence) != 1:
            raise MarianImportError("generation_config.json", f"bad_words_ids entry {sequence} is not one token")
        never.append(int(sequence[0]))
    beams = int(gen.get("num_beams", 4))
    if not 1 <= beams <= MAX_BEAM:
        raise MarianImportError("generation_config.json", f"num_beams={beams} is outside 1..{MAX_BEAM}")
    forced = gen.get("forced_eos_token_id")
    return (
        Generation(
            beam_size=beams,
            length_penalty=float(gen.get("length_penalty", 1.0)),
            max_length=max(1, int(gen.get("max_length", 512)) - 1),
            early_stopping=bool(gen.get("early_stopping", False)),
            forced_eos=forced is not None and int(forced) == special.eos,
            repetition_guard=repetition_guard,
            cut_degenerate=repetition_guard,
        ),
        never,
    )


def transformers_diff(src: MarianDir, model: Transformer, sources: Sequence[Sequence[int]]) -> float | None:
    """Max |logits − transformers' MarianMTModel logits| on `sources`, if transformers is installed."""
    try:
        from transformers import MarianMTModel
    except ImportError:
        return None
    reference = MarianMTModel.from_pretrained(str(src.path)).eval()  # type: ignore[no-untyped-call]
    start = int(src.config.get("decoder_start_token_id", model.cfg.pad_id))
    worst = 0.0
    with torch.no_grad():
        for ids in sources:
            src_ids = torch.tensor([list(ids)])
            tgt = torch.tensor([[start, *list(ids)[:4]]])
            theirs = reference(input_ids=src_ids, decoder_input_ids=tgt).logits
            worst = max(worst, float((model(src_ids, tgt) - theirs).abs().max()))
    return worst


def import_marian(
    hf_dir: Path,
    out: Path,
    precision: str = "fp32",
    source: str | None = None,
    targets: Sequence[str] = (),
    check_sentences: Sequence[str] = CHECK_SENTENCES,
    repetition_guard: bool = False,
    calibration_text: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Convert, export and validate. Returns the export report (also written beside the graphs).
    At int8, `calibration_text` (source language -> sentences) gives the activations constant scales."""
    src = read_marian_dir(hf_dir)
    check_config(src)
    special = check_vocab(src, int(_field(src.config, "vocab_size")))
    languages, prefix = resolve_languages(src, source, targets)
    generation, never = generation_defaults(src, special, repetition_guard)
    cfg = model_config(src, languages, never)
    model = Transformer(cfg)
    state = convert_state(_load_weights(src.weights), cfg, model.state_dict())
    model.load_state_dict(state)
    model.eval()
    tokenizer = hf_tokenizer(hf_dir)
    first_prefix = prefix.get(languages.directions[0][1], [])
    sources = [[*first_prefix, *tokenizer.encode(s), special.eos] for s in check_sentences]
    conventions = Conventions(
        languages=languages,
        special_ids=special,
        tokenizer_files={
            "source_tokenizer": hf_dir / "source.spm",
            "target_tokenizer": hf_dir / "target.spm",
            "vocab": hf_dir / "vocab.json",
        },
        tokenizer=TokenizerSpec(kind="vocab"),
        decoder_start=dict(languages.tag_ids),
        source_prefix=prefix,
        generation=generation,
        origin="marian",
    )
    diff = transformers_diff(src, model, sources)
    if diff is not None and diff > 1e-3:
        raise MarianImportError("weights", f"the converted network differs from transformers' by {diff:.3g}")
    extra = {"hf_dir": str(hf_dir.resolve()), "transformers_max_abs_diff": diff}
    unprefixed = [s[len(first_prefix) :] for s in sources]
    report = export_network(model, conventions, out, precision, sources, unprefixed, extra, calibration_text)
    log.info("imported %s to %s", hf_dir, out)
    return report
