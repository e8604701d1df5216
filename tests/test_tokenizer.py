"""The tokenizer keeps the reserved ids and never loses a character."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from model.tokenizer import check_conventions, load_tokenizer, tokenizer_languages, train_tokenizer
from service import conventions as cv


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> spm.SentencePieceProcessor:
    sentences = ["A man is playing a guitar.", "Un homme joue de la guitare.", "Deux chiens courent dans l'herbe."] * 50
    path = tmp_path_factory.mktemp("spm") / "spm.model"
    train_tokenizer(sentences, path, vocab_size=295, languages=["en", "fr", "de"])
    return load_tokenizer(path)


def test_reserved_ids_follow_the_conventions(tokenizer: spm.SentencePieceProcessor) -> None:
    check_conventions(tokenizer, ["en", "fr", "de"])
    first = cv.FIRST_LANGUAGE_TAG_ID
    assert [tokenizer.piece_to_id(f"<2{lang}>") for lang in ("en", "fr", "de")] == [first, first + 1, first + 2]
    assert tokenizer_languages(tokenizer) == ["en", "fr", "de"]
    assert tokenizer.encode("<mask>")[-1] == cv.MASK_ID
    assert tokenizer.encode("<2de>") != [first + 2]  # a tag is a reserved id, never produced from text
    with pytest.raises(ValueError, match=r"no tag for \['cs'\]"):
        check_conventions(tokenizer, ["en", "cs"])


@pytest.mark.parametrize("text", ["Zoë 😀 says 𝄞 ǅ ok", "Ωmega Ñandú Łódź", "price: 1,234.50€ at https://x.io/a?b=1"])
def test_unseen_characters_round_trip(tokenizer: spm.SentencePieceProcessor, text: str) -> None:
    ids = tokenizer.encode(text)
    assert cv.UNK_ID not in ids
    assert tokenizer.decode(ids) == text


def test_committed_tokenizer_follows_the_conventions() -> None:
    path = Path(__file__).resolve().parent.parent / "artifacts" / "default" / cv.TOKENIZER_FILE
    if not path.exists():
        pytest.skip("no committed model yet")
    check_conventions(load_tokenizer(path), ["en", "fr"])
