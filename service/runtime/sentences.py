"""Sentence splitting that keeps every character between sentences, so a text can be rejoined exactly.

Lines are split first (paragraph breaks stay as they were), then each line into sentences by
pysbd's rules for the source language (English rules where pysbd has none), a window of the line
at a time, so that the time stays in proportion to the line's length.
"""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass

import pysbd
from pysbd.languages import LANGUAGE_CODES

from service.runtime.protect import PROTECTED
from service.textnorm import has_letters

_LINE_BREAKS = re.compile(r"(\r\n|\r|\n)")
# A line of words, digits, commas, apostrophes, hyphens and single spaces, with at most one
# final . ! or ?: one sentence, as pysbd also finds (tests/test_sentences.py holds the two to
# the same answers on test2016), without pysbd's cost, which it pays in regular expressions
# compiled again and again (docs/BENCHMARKS.md). Most requests are such a line.
_ONE_SENTENCE = re.compile(r"(?:[^\W_]|[,'’-]| (?! ))+[.!?]?")
# pysbd's time grows with the square of a line's length: each abbreviation it finds rewrites the
# whole line (40 ms for 6,500 characters, 4.8 s for 104,000; docs/BENCHMARKS.md). A longer line
# is segmented a window at a time: each window's sentences but its last are kept, and the next
# window starts where that last one does. A sentence that fills its window is looked for in one
# twice as wide, up to _WIDEST_WINDOW characters; one longer still is cut at the last space
# before the window's end.
_WINDOW = 2000
_WIDEST_WINDOW = 8000


@dataclass(frozen=True)
class Layout:
    """A text as sentences and the exact whitespace around them: gaps[i] precedes sentences[i]."""

    sentences: list[str]
    gaps: list[str]  # len(sentences) + 1: the last is the text's tail

    def join(self, translated: list[str]) -> str:
        if len(translated) != len(self.sentences):
            raise ValueError(f"expected {len(self.sentences)} sentences, got {len(translated)}")
        return "".join(g + t for g, t in zip(self.gaps, [*translated, ""], strict=True))


_per_thread = threading.local()


def _segmenter(language: str) -> pysbd.Segmenter:
    """This thread's segmenter: a pysbd.Segmenter keeps the text it works on in its own
    attributes, so two threads sharing one get each other's sentences (or none)."""
    segmenters: dict[str, pysbd.Segmenter] = _per_thread.__dict__.setdefault("segmenters", {})
    language = language.split("-")[0]
    if language not in LANGUAGE_CODES:
        language = "en"  # pysbd has no rules for it: English ones split on . ! ? as most scripts do
    if language not in segmenters:
        segmenters[language] = pysbd.Segmenter(language=language, clean=False, char_span=True)
    return segmenters[language]


def split_sentences(text: str, language: str) -> Layout:
    sentences: list[str] = []
    gaps: list[str] = []
    pending = ""  # whitespace and line breaks not yet attached to a sentence
    for part in _LINE_BREAKS.split(text):
        if not part or _LINE_BREAKS.fullmatch(part) or not part.strip():
            pending += part
            continue
        cursor = 0
        for span_start, span_end in _spans(part, language):
            start, end = max(span_start, cursor), max(span_end, cursor)
            chunk = part[start:end]
            stripped = chunk.strip()
            if not stripped:
                continue
            lead = part[cursor : start + len(chunk) - len(chunk.lstrip())]
            gaps.append(pending + lead)
            sentences.append(stripped)
            cursor = start + len(chunk) - len(chunk.lstrip()) + len(stripped)
            pending = ""
        pending += part[cursor:]
    gaps.append(pending)
    layout = Layout(sentences, gaps)
    if layout.join(sentences) != text:  # pysbd dropped or altered characters: one sentence per line instead
        return _by_lines(text)
    return layout


def _spans(line: str, language: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in one line of text."""
    stripped = line.strip()
    # A line without letters comes back as it is, split or not (numbers, symbols: the translator
    # passes such text through), and pysbd is slowest on such lines ("1. 2. 3. …": 0.13 s for
    # 5,000 characters).
    if _ONE_SENTENCE.fullmatch(stripped) or not has_letters(stripped):
        start = len(line) - len(line.lstrip())
        return [(start, start + len(stripped))]
    return _keep_verbatim_whole(line, _windowed_spans(line, _segmenter(language)))


def _windowed_spans(line: str, segmenter: pysbd.Segmenter) -> list[tuple[int, int]]:
    """pysbd's sentence spans of `line`, found a window at a time (_WINDOW)."""
    spans: list[tuple[int, int]] = []
    start, width = 0, _WINDOW
    while start < len(line):
        end = start + width
        found = [(span.start + start, span.end + start) for span in segmenter.segment(line[start:end])]
        if end >= len(line):
            return spans + found
        if len(found) > 1 and found[-1][0] > start:  # the last may go on past the window: segmented again
            spans += found[:-1]
            start, width = found[-1][0], _WINDOW
        elif width < _WIDEST_WINDOW:
            width *= 2
        else:
            cut = line.rfind(" ", start + 1, end)
            cut = end if cut < 0 else cut
            spans.append((start, cut))
            start, width = cut, _WINDOW
    return spans


def _keep_verbatim_whole(line: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join sentences that a boundary inside a URL or e-mail address split (pysbd ends one at the
    `?` of a query string): such a span travels whole (service/runtime/protect.py)."""
    inside = [(m.start(), m.end()) for m in PROTECTED.finditer(line)]  # in order, none overlapping
    if not inside:
        return spans
    starts = [start for start, _ in inside]

    def within(position: int) -> bool:
        """Whether `position` lies strictly inside a verbatim span: only the last one starting
        before it can hold it (a line of thousands of addresses is one search each, not a scan)."""
        last = bisect.bisect_left(starts, position) - 1
        return last >= 0 and position < inside[last][1]

    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and (within(start) or within(merged[-1][1])):
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _by_lines(text: str) -> Layout:
    sentences, gaps, pending = [], [], ""
    for part in _LINE_BREAKS.split(text):
        if not part.strip():
            pending += part
            continue
        lead = part[: len(part) - len(part.lstrip())]
        gaps.append(pending + lead)
        sentences.append(part.strip())
        pending = part[len(lead) + len(part.strip()) :]
    gaps.append(pending)
    return Layout(sentences, gaps)
