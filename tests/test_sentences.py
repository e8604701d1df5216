"""Sentence splitting: exact rejoining, and the same answer from any number of threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from service.runtime.sentences import split_sentences

TEXTS = [
    "A man is playing a guitar. A dog runs in the park!\n\nIs it raining?  Yes.",
    "Mr. Smith arrived at 10 a.m. on Monday. He left early.",
    "Un homme joue de la guitare. Un chien court dans le parc.\nIl pleut ?",
    "One sentence without a final stop",
]


def test_a_text_splits_into_sentences_and_rejoins_exactly() -> None:
    layout = split_sentences(TEXTS[0], "en")
    assert layout.sentences == ["A man is playing a guitar.", "A dog runs in the park!", "Is it raining?", "Yes."]
    assert layout.join(layout.sentences) == TEXTS[0]
    assert "\n\n" in layout.gaps[2]  # the paragraph break stays where it was


def test_threads_splitting_at_once_get_their_own_sentences() -> None:
    """The service splits requests in worker threads; a shared segmenter once returned another
    text's sentences, or none, so the text came back untranslated."""
    cases = [(text, "fr" if i == 2 else "en") for i, text in enumerate(TEXTS)] * 50
    expected = [split_sentences(text, lang) for text, lang in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda case: split_sentences(*case), cases))
    assert got == expected
