"""Training the joint English–French SentencePiece model."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from service import conventions as cv


def train_tokenizer(sentences: Sequence[str], out_file: Path, vocab_size: int, seed: int = 0) -> None:
    """Train a unigram SentencePiece model with the project's reserved ids.

    Byte fallback keeps emoji and rare characters representable, so nothing
    ever decodes to `⁇`.
    """
    sample = list(sentences)
    random.Random(seed).shuffle(sample)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample[:400_000]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        pad_id=cv.PAD_ID,
        unk_id=cv.UNK_ID,
        bos_id=cv.BOS_ID,
        eos_id=cv.EOS_ID,
        pad_piece=cv.PAD,
        unk_piece=cv.UNK,
        bos_piece=cv.BOS,
        eos_piece=cv.EOS,
        user_defined_symbols=list(cv.USER_SYMBOLS),
        num_threads=2,
        minloglevel=2,
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(model.getvalue())
    check_conventions(load_tokenizer(out_file))


def load_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def check_conventions(sp: spm.SentencePieceProcessor) -> None:
    """Fail loudly if a tokenizer's reserved ids disagree with `service.conventions`."""
    for piece, want in cv.RESERVED_IDS.items():
        got = sp.piece_to_id(piece)
        if got != want:
            raise ValueError(f"tokenizer maps {piece} to id {got}, conventions require {want}")
