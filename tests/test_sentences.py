"""Sentence splitting: exact rejoining, and the same answer from any number of threads."""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pysbd

from model.corpus import read_lines
from service.runtime.sentences import (
    _ONE_SENTENCE,
    _WIDEST_WINDOW,
    _WINDOW,
    _keep_verbatim_whole,
    _spans,
    _windowed_spans,
    split_sentences,
)

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


def test_a_long_line_splits_as_pysbd_does_it_whole(shared_data: Path) -> None:
    """A line longer than pysbd's window is segmented a window at a time, with the same sentences."""
    for language in ("en", "fr"):
        captions = read_lines(shared_data / f"multi30k/test_2016_flickr.{language}.gz")
        segmenter = pysbd.Segmenter(language=language, clean=False, char_span=True)
        for first in (0, 100):
            line = " ".join(captions[first : first + 90])
            assert len(line) > 2 * _WINDOW
            whole = [line[s.start : s.end].strip() for s in segmenter.segment(line)]
            assert [line[a:b].strip() for a, b in _spans(line, language)] == whole
            assert len(split_sentences(line, language).sentences) == len(whole) > 80


class _Recording(pysbd.Segmenter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(language="en", clean=False, char_span=True)
        self.lengths: list[int] = []

    def segment(self, text: str) -> list[pysbd.utils.TextSpan]:
        self.lengths.append(len(text))
        return super().segment(text)


def test_pysbd_sees_a_long_line_a_window_at_a_time(shared_data: Path) -> None:
    """pysbd's time grows with the square of what it is given: a 100,000-character line took it 5 s.
    No call sees more than _WIDEST_WINDOW characters, and the sentences still rejoin exactly."""
    captions = " ".join(read_lines(shared_data / "multi30k/test_2016_flickr.en.gz"))[:100_000]
    no_ending = "a (b) c, " * 4000  # no sentence boundary in 36,000 characters
    for line in (captions, no_ending):
        segmenter = _Recording()
        spans = _windowed_spans(line, segmenter)
        assert max(segmenter.lengths) <= _WIDEST_WINDOW
        assert sum(segmenter.lengths) < 2 * len(line) + _WIDEST_WINDOW  # linear: each character at most about twice
        assert spans[0][0] == 0 and spans[-1][1] == len(line)
        assert all(a < b and b <= c for (a, b), (c, _) in itertools.pairwise(spans))  # in order, none overlapping
    layout = split_sentences(no_ending, "en")
    assert layout.join(layout.sentences) == no_ending
    assert 36_000 / _WIDEST_WINDOW <= len(layout.sentences) <= 2 * 36_000 / _WIDEST_WINDOW


def test_a_line_without_letters_is_one_sentence() -> None:
    """Numbers and symbols come back as they are, split or not: pysbd does not see them."""
    text = "1. 2. 3. " * 1000 + "\n(12) - 34! 5."
    layout = split_sentences(text, "en")
    assert layout.sentences == [("1. 2. 3. " * 1000).strip(), "(12) - 34! 5."]
    assert layout.join(layout.sentences) == text
    assert split_sentences("Été. 12. Hiver.", "fr").sentences == ["Été.", "12.", "Hiver."]


def test_a_line_of_many_addresses_keeps_each_whole_in_time() -> None:
    """A boundary inside a URL or address joins its two sentences; with thousands of each on a
    line (a file's line may hold 200,000 characters), the check was a scan per sentence."""
    line = "Mail a@b.co now. " * 20_000
    spans = [(i * 17, i * 17 + 16) for i in range(20_000)]
    started = time.perf_counter()
    assert _keep_verbatim_whole(line, spans) == spans  # no boundary falls inside an address
    assert time.perf_counter() - started < 2.0  # the scan took about 34 s
    cut_inside = [(0, 7), (7, 16), (17, 33)]  # "Mail a@" | "b.co now."
    assert _keep_verbatim_whole(line[:34], cut_inside) == [(0, 16), (17, 33)]
