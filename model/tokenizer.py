"""Training the joint SentencePiece model of a model's languages."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from service import conventions as cv

# SentencePiece trains on at most this many sentences, sampled uniformly from the corpus.
TOKENIZER_SAMPLE = 400_000


def train_tokenizer(
    sentences: Sequence[str], out_file: Path, vocab_size: int, languages: Sequence[str], seed: int = 0
) -> None:
    """Train a unigram SentencePiece model with the project's reserved ids and one tag per language.

    Byte fallback keeps emoji and rare characters representable, so nothing
    ever decodes to `⁇`.
    """
    sample = list(sentences)
    random.Random(seed).shuffle(sample)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample[:TOKENIZER_SAMPLE]),
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
        user_defined_symbols=cv.user_symbols(languages),
        num_threads=2,
        minloglevel=2,
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(model.getvalue())
    check_conventions(load_tokenizer(out_file), languages)


def load_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def check_conventions(sp: spm.SentencePieceProcessor, languages: Sequence[str]) -> None:
    """Fail loudly if a tokenizer's control ids disagree with `service.conventions`, or if it
    reserves no tag for one of `languages`."""
    for piece, want in cv.CONTROL_IDS.items():
        got = sp.piece_to_id(piece)
        if got != want:
            raise ValueError(f"tokenizer maps {piece} to id {got}, conventions require {want}")
    missing = [lang for lang in languages if tag_id(sp, lang) == cv.UNK_ID]
    if missing:
        raise ValueError(f"tokenizer reserves no tag for {missing}: it was trained for other languages")


def tag_id(sp: spm.SentencePieceProcessor, lang: str) -> int:
    """The id of `<2lang>`, or UNK_ID when the tokenizer has no such piece."""
    return int(sp.piece_to_id(cv.language_tag(lang)))


def tokenizer_languages(sp: spm.SentencePieceProcessor) -> list[str]:
    """The languages whose tags a tokenizer reserves, in id order."""
    out = []
    for i in range(cv.FIRST_LANGUAGE_TAG_ID, sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if not (piece.startswith("<2") and piece.endswith(">")):
            break
        out.append(piece[2:-1])
    return out
