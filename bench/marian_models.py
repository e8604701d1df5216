"""Marian models built with transformers, laid out as a Hugging Face model directory: tiny random
ones for tests, larger ones for benchmarks.

Each has its own source and target SentencePiece models trained on the given sentences and one
vocab.json over both, as OPUS-MT's conversion writes them: </s> 0, <unk> 1, then any target
language tokens, the pieces, and <pad> last.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch


@dataclass(frozen=True)
class Variant:
    activation: str = "swish"
    shared_embeddings: bool = True
    tied_output: bool = True
    scale_embedding: bool = True
    language_tokens: tuple[str, ...] = ()  # e.g. ("fra", "deu"): a multi-target model
    d_model: int = 32
    heads: int = 4
    ffn: int = 64
    layers: int = 2
    max_length: int = 24
    num_beams: int = 5
    length_penalty: float = 1.0
    weight_scale: float = 1.5  # random weights far from uniform outputs: few near-ties
    seed: int = 0
    source_lang: str = "en"
    target_lang: str = "fr"
    spm_vocab: int = 120  # pieces of each SentencePiece model
    vocab_size: int = 0  # pad vocab.json with unused pieces up to this size (0: no padding)
    max_positions: int = 128
    init: str = "wide"  # "wide": weights far from uniform outputs; "hf": transformers' own init (for training)


def _train_spm(sentences: Sequence[str], prefix: Path, vocab_size: int) -> Path:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=2,
        unk_id=1,
        pad_id=-1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    return prefix.with_suffix(".model")


def _vocab(models: Sequence[Path], language_tokens: Sequence[str], size: int = 0) -> dict[str, int]:
    pieces: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for token in language_tokens:
        pieces[f">>{token}<<"] = len(pieces)
    for path in models:
        sp = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                pieces.setdefault(sp.id_to_piece(i), len(pieces))
    while len(pieces) < size - 1:  # unused entries, as a large multilingual vocabulary would hold
        pieces[f"▁unused{len(pieces)}"] = len(pieces)
    pieces["<pad>"] = len(pieces)
    return pieces


def build_marian_dir(out: Path, source: Sequence[str], target: Sequence[str], variant: Variant) -> Path:
    """A seeded random MarianMTModel with its tokenizer files in `out` (created)."""
    model = new_marian(out, source, target, variant)
    save_marian_dir(model, out, variant)
    return out


def new_marian(out: Path, source: Sequence[str], target: Sequence[str], variant: Variant) -> Any:
    """Tokenizer files written to `out`, and a seeded random MarianMTModel over their vocabulary."""
    from transformers import MarianConfig, MarianMTModel

    out.mkdir(parents=True, exist_ok=True)
    work = out / "spm-work"
    work.mkdir(exist_ok=True)
    source_spm = _train_spm(source, work / "source", variant.spm_vocab)
    target_spm = _train_spm(target, work / "target", variant.spm_vocab)
    vocab = _vocab([source_spm, target_spm], variant.language_tokens, variant.vocab_size)
    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=variant.d_model,
        encoder_layers=variant.layers,
        decoder_layers=variant.layers,
        encoder_attention_heads=variant.heads,
        decoder_attention_heads=variant.heads,
        encoder_ffn_dim=variant.ffn,
        decoder_ffn_dim=variant.ffn,
        activation_function=variant.activation,
        max_position_embeddings=variant.max_positions,
        scale_embedding=variant.scale_embedding,
        share_encoder_decoder_embeddings=variant.shared_embeddings,
        tie_word_embeddings=variant.tied_output,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        dropout=0.0,
    )
    torch.manual_seed(variant.seed)
    model = MarianMTModel(config).eval()  # type: ignore[no-untyped-call]
    if variant.init == "wide":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("weight") and param.dim() == 2:
                    param.normal_(0.0, variant.weight_scale / param.shape[-1] ** 0.5)
                elif "norm" in name and name.endswith("weight"):
                    param.uniform_(0.5, 1.5)
                else:
                    param.normal_(0.0, 0.1)
            model.final_logits_bias.normal_(0.0, 0.5)
    shutil.copyfile(source_spm, out / "source.spm")
    shutil.copyfile(target_spm, out / "target.spm")
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tokenizer_config = {"source_lang": variant.source_lang, "target_lang": variant.target_lang, "model_max_length": 512}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    shutil.rmtree(work)
    return model


def save_marian_dir(model: Any, out: Path, variant: Variant) -> None:
    """The model's weights, config and generation defaults beside its tokenizer files."""
    pad = int(model.config.pad_token_id)
    model.save_pretrained(str(out))
    generation = {
        "bad_words_ids": [[pad]],
        "bos_token_id": 0,
        "decoder_start_token_id": pad,
        "eos_token_id": 0,
        "forced_eos_token_id": 0,
        "max_length": variant.max_length,
        "num_beams": variant.num_beams,
        "length_penalty": variant.length_penalty,
        "pad_token_id": pad,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
