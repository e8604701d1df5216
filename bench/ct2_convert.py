"""Convert an mtserve checkpoint directory into a CTranslate2 TransformerSpec (bench-only).

Same weights, same sinusoidal table, same tied embeddings: CTranslate2 then decodes
the very model the ONNX runtime decodes, so the benchmark compares engines only.

`vmap_from_shortlist` writes CTranslate2's own shortlist, a vocabulary map (its `use_vmap`), from
the lexical table of an mtserve output layer file (`mtserve shortlist`), so that both engines
decode over about the same candidates: every sentence gets the special tokens and the target
language's most frequent tokens, each source token itself and its ranked translations.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import ctranslate2
import numpy as np
import torch
from ctranslate2.specs import transformer_spec

from model.artifacts import load_model_dir
from model.transformer import DecoderLayer, EncoderLayer, FeedForward, Transformer, sinusoidal_positions
from service.manifest import load_manifest
from service.runtime.shortlist import FREQUENT_FIRST, OutputLayer, always_candidates


def _linear(spec: Any, layers: list[torch.nn.Linear]) -> None:
    """One CTranslate2 linear from one or more of ours, fused along the output axis (QKV, KV)."""
    spec.weight = torch.cat([layer.weight for layer in layers]).detach().numpy()
    spec.bias = torch.cat([layer.bias for layer in layers]).detach().numpy()


def _norm(spec: Any, norm: torch.nn.Module) -> None:
    norm = cast(torch.nn.LayerNorm, norm)
    spec.gamma = norm.weight.detach().numpy()
    spec.beta = norm.bias.detach().numpy()


def _ffn(spec: Any, layer: FeedForward, norm: torch.nn.Module) -> None:
    _norm(spec.layer_norm, norm)
    _linear(spec.linear_0, [cast(torch.nn.Linear, layer.net[0])])
    _linear(spec.linear_1, [cast(torch.nn.Linear, layer.net[2])])


def build_spec(model: Transformer, pieces: list[str], source_eos: bool = False) -> Any:
    """`source_eos`: CTranslate2 appends </s> to each source itself (as an Argos package of this model
    needs, since its users pass SentencePiece pieces only); else the caller's sources carry it."""
    cfg = model.cfg
    if not cfg.pre_norm:
        raise NotImplementedError("post-norm: set pre_norm=False in the spec and map the norms after each sublayer")
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.n_heads, pre_norm=cfg.pre_norm
    )
    positions = sinusoidal_positions(cfg.max_positions, cfg.d_model).numpy()
    embedding = model.embed.weight.detach().numpy()
    for side in (spec.encoder, spec.decoder):
        tables = side.embeddings if isinstance(side.embeddings, list) else [side.embeddings]
        for table in tables:
            table.weight = embedding
        side.position_encodings.encodings = positions
        side.scale_embeddings = True
    _norm(spec.encoder.layer_norm, model.encoder_norm)
    for layer_spec, layer in zip(spec.encoder.layer, cast(list[EncoderLayer], list(model.encoder)), strict=True):
        attn = layer.self_attn
        _norm(layer_spec.self_attention.layer_norm, layer.attn_res.norm)
        _linear(layer_spec.self_attention.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
        _linear(layer_spec.self_attention.linear[1], [attn.out_proj])
        _ffn(layer_spec.ffn, layer.ffn, layer.ffn_res.norm)
    _norm(spec.decoder.layer_norm, model.decoder_norm)
    for dec_spec, dec in zip(spec.decoder.layer, cast(list[DecoderLayer], list(model.decoder)), strict=True):
        own, cross = dec.self_attn, dec.cross_attn
        _norm(dec_spec.self_attention.layer_norm, dec.self_res.norm)
        _linear(dec_spec.self_attention.linear[0], [own.q_proj, own.k_proj, own.v_proj])
        _linear(dec_spec.self_attention.linear[1], [own.out_proj])
        _norm(dec_spec.attention.layer_norm, dec.cross_res.norm)
        _linear(dec_spec.attention.linear[0], [cross.q_proj])
        _linear(dec_spec.attention.linear[1], [cross.k_proj, cross.v_proj])
        _linear(dec_spec.attention.linear[2], [cross.out_proj])
        _ffn(dec_spec.ffn, dec.ffn, dec.ffn_res.norm)
    spec.decoder.projection.weight = embedding
    spec.decoder.projection.bias = np.zeros(cfg.vocab_size, dtype=np.float32)
    # The decoder starts from the target-language tag, given as the target prefix.
    spec.config.decoder_start_token = None
    spec.config.add_source_eos = source_eos
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def _vmap_candidates(layer: OutputLayer, language: str, fixed: set[int], source: Sequence[int]) -> int:
    """How many candidates CTranslate2 takes from such a map for one source (its ids)."""
    chosen = fixed | set(source)
    for token in source:
        chosen.update(layer.translations[language][token].tolist())
    return len(chosen)


def vmap_from_shortlist(
    graphs_dir: Path, language: str, out: Path, size: int = 0, sources: Sequence[Sequence[int]] = ()
) -> Path:
    """A CTranslate2 vocabulary map into `language` from the output layer file of the mtserve model
    directory `graphs_dir`: the special tokens and the language's most frequent tokens on the empty
    n-gram's line (always candidates), then one line per source token with the token and its
    translations, in the SentencePiece pieces both share. With `size`, the line of frequent tokens
    is as long as it takes for the median of `sources` to get `size` candidates, as many as the
    shortlist of that size gives each sentence (its frequent tokens fill it up); without, it
    holds FREQUENT_FIRST of them, and a sentence gets a few hundred."""
    import sentencepiece as spm

    manifest = load_manifest(graphs_dir)
    layer = OutputLayer.load(graphs_dir, manifest)
    if layer is None or language not in layer.translations:
        raise ValueError(f"{graphs_dir} has no shortlist into {language!r}")
    frequent, always = layer.frequent[language], always_candidates(manifest.special_ids)

    def fixed(count: int) -> np.ndarray:
        return np.unique(np.concatenate((always, frequent[:count])))

    low, high = FREQUENT_FIRST, len(frequent)
    while size and sources and low < high:  # the fewest frequent tokens that reach `size` at the median
        middle = (low + high) // 2
        candidates = set(fixed(middle).tolist())
        median = float(np.median([_vmap_candidates(layer, language, candidates, s) for s in sources]))
        low, high = (low, middle) if median >= size else (middle + 1, high)
    sp = spm.SentencePieceProcessor(model_file=str(graphs_dir / "spm.model"))
    piece = sp.id_to_piece
    lines = ["\t" + " ".join(piece(int(i)) for i in fixed(low))]
    for token, translations in enumerate(layer.translations[language]):
        targets = dict.fromkeys([token, *translations.tolist()])
        lines.append(piece(token) + "\t" + " ".join(piece(int(i)) for i in targets))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def convert(
    model_dir: Path, out: Path, quantization: str | None = None, source_eos: bool = False, vmap: Path | None = None
) -> Path:
    """`vmap`: a vocabulary map saved with the model, for `use_vmap` (vmap_from_shortlist)."""
    model, sp = load_model_dir(model_dir)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    spec = build_spec(model, pieces, source_eos)
    spec.validate()
    spec.optimize(quantization=quantization)
    if vmap is not None:
        spec.register_vocabulary_mapping(str(vmap))
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    ctranslate2.Translator(str(out), device="cpu")  # fails here if the saved model does not load
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quantization", choices=["int8", "int8_float32"])
    args = parser.parse_args()
    convert(args.model, args.out, args.quantization)


if __name__ == "__main__":
    main()
