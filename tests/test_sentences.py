"""Sentence splitting: exact rejoining, and the same answer from any number of threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pysbd

from model.corpus import read_lines
from service.runtime.sentences import _ONE_SENTENCE, _spans, split_sentences

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


LINES = [
    "  A man, a plan, a canal - Panama!  ",
    "l'homme et l'enfant d'Anne regardent la mer",
    "rock 'n' Roll is fun.",
    "Two  spaces here.",  # not the shortcut (its boundary pattern has a class with a space): pysbd decides
    "A man (in red) Walks.",
    "3.5 metres. Then 2 more",
]


def test_the_one_sentence_shortcut_splits_as_pysbd_does(shared_data: Path) -> None:
    """Lines the shortcut takes as one sentence must be what pysbd makes of them."""
    for language in ("en", "fr"):
        lines = LINES + read_lines(shared_data / f"multi30k/test_2016_flickr.{language}.gz")
        segmenter = pysbd.Segmenter(language=language, clean=False, char_span=True)
        took_shortcut = 0
        for line in lines:
            expected = [(s.start, s.end) for s in segmenter.segment(line)]
            got = _spans(line, language)
            # pysbd's spans may carry the spaces around a sentence; compare the sentences.
            assert [line[a:b].strip() for a, b in got] == [line[a:b].strip() for a, b in expected], line
            took_shortcut += _ONE_SENTENCE.fullmatch(line.strip()) is not None
        assert took_shortcut > len(lines) * 0.8  # most lines of a caption corpus take it


def test_a_url_with_a_query_string_stays_in_one_sentence() -> None:
    text = "See https://example.com/a?x=1 now. Mail a.b@c.com today. Is it? Yes."
    layout = split_sentences(text, "en")
    assert layout.sentences == ["See https://example.com/a?x=1 now.", "Mail a.b@c.com today.", "Is it?", "Yes."]
    assert layout.join(layout.sentences) == text
