"""HTML translation by blocks: each block element's text is translated as a whole.

Inline tags (`<b>`, `<a href>`, ...) are lifted out as positioned markers and put back around
the matching words of the translation, so a sentence is never cut at a `<b>`. Every tag keeps
its original text, attributes included. Text inside script, style, code and pre is never
translated.

Where an inline element goes in the translation, most certain first:
1. its text occurs verbatim in the translation (names, numbers);
2. its own translation, made alongside, occurs there (case-insensitive);
3. the same relative position and length, snapped to word boundaries.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import html
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TypeVar

BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "caption",
        "dd",
        "details",
        "dialog",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "head",
        "header",
        "hgroup",
        "hr",
        "html",
        "legend",
        "li",
        "main",
        "nav",
        "ol",
        "option",
        "p",
        "section",
        "summary",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "title",
        "tr",
        "ul",
        "br",
    ]
)
OPAQUE_TAGS = frozenset({"script", "style", "code", "pre", "textarea", "svg", "math"})
VOID_TAGS = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"]
)
_WORD = re.compile(r"\S+")
_END_PUNCTUATION = frozenset(".!?;:,")
# A word or phrase translated alone often gains an article ("red" -> "Un rouge").
T = TypeVar("T")
_LEADING_ARTICLE = re.compile(r"^(?:(?:un|une|le|la|les|des|du|a|an|the)\s+|l')", re.IGNORECASE)


@dataclass
class _Inline:
    open_raw: str
    close_raw: str  # empty for a void tag
    start: int  # character offsets in the block's plain text
    end: int
    # opened and not closed within the block (`<b>Name:<br>John</b>`): its tag opens before any other
    # element at its offset, whatever their width, as it encloses the rest of the block
    unclosed: bool = False


@dataclass
class _Block:
    parts: list[str] = field(default_factory=list)  # plain text pieces
    inlines: list[_Inline] = field(default_factory=list)
    open_stack: list[tuple[str, str, int]] = field(default_factory=list)  # (tag, raw, start)
    # len(text), kept as parts come: a tag's offset is read at every tag, and joining the parts
    # each time took the square of a block's length (3.3 s for 16,000 inline elements)
    length: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, data: str) -> None:
        self.parts.append(data)
        self.length += len(data)


class _Collector(HTMLParser):
    """Splits a document into raw markup and translatable blocks, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.items: list[str | _Block] = []
        self.block: _Block | None = None
        self.opaque_depth = 0

    # ---- helpers
    def _raw(self, text: str) -> None:
        self._close_block()
        self.items.append(text)

    def _close_block(self) -> None:
        if self.block is None:
            return
        block, self.block = self.block, None
        # tags still open at a block boundary are emitted as they came, around the text
        for _tag, raw, start in block.open_stack:
            block.inlines.append(_Inline(raw, "", start, start, unclosed=True))
        block.open_stack.clear()
        self.items.append(block)

    def _current(self) -> _Block:
        if self.block is None:
            self.block = _Block()
        return self.block

    # ---- parser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or f"<{tag}>"
        if self.opaque_depth or tag in OPAQUE_TAGS:
            if tag in OPAQUE_TAGS:
                self.opaque_depth += 1
            self._raw(raw)
        elif tag in BLOCK_TAGS:
            self._raw(raw)
        elif tag in VOID_TAGS:
            block = self._current()
            block.inlines.append(_Inline(raw, "", block.length, block.length))
        else:
            block = self._current()
            block.open_stack.append((tag, raw, block.length))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or f"<{tag}/>"
        if self.opaque_depth or tag in BLOCK_TAGS:
            self._raw(raw)
        else:
            block = self._current()
            block.inlines.append(_Inline(raw, "", block.length, block.length))

    def handle_endtag(self, tag: str) -> None:
        raw = f"</{tag}>"
        if self.opaque_depth:
            if tag in OPAQUE_TAGS:
                self.opaque_depth -= 1
            self._raw(raw)
            return
        block = self.block
        if tag not in BLOCK_TAGS and block is not None:
            for i in range(len(block.open_stack) - 1, -1, -1):
                if block.open_stack[i][0] == tag:
                    _, open_raw, start = block.open_stack.pop(i)
                    block.inlines.append(_Inline(open_raw, raw, start, block.length))
                    return
        self._raw(raw)

    def handle_data(self, data: str) -> None:
        if self.opaque_depth:
            self._raw(data)
        else:
            self._current().add(data)

    def handle_entityref(self, name: str) -> None:
        self.handle_data(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.handle_data(html.unescape(f"&#{name};"))

    def _other(self, raw: str) -> None:
        self._raw(raw)

    def handle_comment(self, data: str) -> None:
        self._other(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        self._other(f"<!{decl}>")

    def handle_pi(self, data: str) -> None:
        self._other(f"<?{data}>")

    def unknown_decl(self, data: str) -> None:
        self._other(f"<![{data}]>")

    def close(self) -> None:
        super().close()
        rest = self.rawdata
        self._close_block()
        if rest:
            self.items.append(rest)


class Segment:
    """One block's text and the spans of its inline markup: the engine every document format shares.

    `texts()` is what to translate: the block's text (stripped), then each non-empty span's own
    text. `translate()` takes those translations, in that order, and returns the block's new text
    with each span placed in it (same order as given).
    """

    def __init__(self, text: str, spans: list[tuple[int, int]]) -> None:
        self.text, self.spans = text, spans

    def _inner(self) -> Iterator[str]:
        """Each span's own text, stripped (empty where it holds none), made only when asked for."""
        return (self.text[start:end].strip() for start, end in self.spans)

    def texts(self) -> list[str]:
        return list(self.iter_texts())

    def iter_texts(self) -> Iterator[str]:
        """texts(), one at a time: each span's text is made only when it is asked for."""
        stripped = self.text.strip()
        if not stripped:
            return
        yield stripped
        yield from (inner for inner in self._inner() if inner)

    def translate(self, queue: Iterator[str]) -> tuple[str, list[tuple[int, int]]]:
        if not self.text.strip():
            return self.text, list(self.spans)
        translation = next(queue)
        inner = [next(queue) if text else None for text in self._inner()]
        text = self.text
        lead = text[: len(text) - len(text.lstrip())]
        tail = text[len(text.rstrip()) :]
        source = text.strip()
        if translation == source:  # nothing changed (same language, untranslatable): spans stay where they were
            return self.text, list(self.spans)
        placed: dict[int, tuple[int, int]] = {}
        taken = _Places(translation)
        place_of: dict[tuple[int, int], tuple[int, int]] = {}  # source span -> its place in the translation
        for n in sorted(range(len(self.spans)), key=lambda k: (self.spans[k][0], -self.spans[k][1])):
            start, end = self.spans[n][0] - len(lead), self.spans[n][1] - len(lead)
            if (start, end) not in place_of:  # elements on the same text (`<b><i>dog</i></b>`) share one place
                place_of[(start, end)] = _locate(source, translation, start, end, inner[n], taken)
                taken.add(place_of[(start, end)], (start, end))
            span = place_of[(start, end)]
            placed[n] = (span[0] + len(lead), span[1] + len(lead))
        return lead + translation + tail, [placed[n] for n in range(len(self.spans))]


def runs_of(text: str, placed: list[tuple[T, int, int]]) -> list[tuple[str, T | None]]:
    """Cut `text` at the placed spans' edges; each piece takes its innermost span (None: outside all).

    A zero-width span comes out as a piece of empty text at its position (an image, a tab, a break).
    One sweep over the edges, the spans covering a piece in a heap (narrowest first): a paragraph
    of thousands of runs took the square of their number when every piece scanned every span.
    """
    edges = sorted({0, len(text), *(p for _, s, e in placed for p in (s, e))})
    empty: dict[int, list[int]] = {}  # position -> the zero-width spans there, in order
    opening: list[tuple[int, int, int, int]] = []  # (start, width, n, end) of the others, by start
    for n, (_, start, end) in enumerate(placed):
        if start == end:
            empty.setdefault(start, []).append(n)
        elif start < end:
            opening.append((start, end - start, n, end))
    opening.sort()
    covering: list[tuple[int, int, int]] = []  # (width, n, end) of the spans begun, a heap
    begun = 0
    out: list[tuple[str, T | None]] = []
    for a, b in zip(edges, [*edges[1:], len(text)], strict=True):
        out += [("", placed[n][0]) for n in empty.get(a, [])]
        if b > a:
            while begun < len(opening) and opening[begun][0] <= a:
                _, width, n, end = opening[begun]
                heapq.heappush(covering, (width, n, end))
                begun += 1
            while covering and covering[0][2] <= a:  # ended: every span ends at an edge
                heapq.heappop(covering)
            out.append((text[a:b], placed[covering[0][1]][0] if covering else None))
    return out


class TextLimitExceeded(ValueError):
    """A document's texts come to more characters than the limit asked: `characters` of them when
    counting stopped (at least that many)."""

    def __init__(self, characters: int) -> None:
        super().__init__(f"{characters} characters")
        self.characters = characters


class HtmlDocument:
    """Parse once, hand out the texts to translate, render with their translations."""

    def __init__(self, source: str) -> None:
        collector = _Collector()
        collector.feed(source)
        collector.close()
        self.items = collector.items

    @staticmethod
    def _segment(block: _Block) -> Segment:
        return Segment(block.text, [(i.start, i.end) for i in block.inlines])

    def texts(self, limit: int | None = None) -> list[str]:
        """Each block's text (stripped), then each inline element's text, in document order. With
        `limit`, TextLimitExceeded as soon as they come to more characters than that: an element's
        text counts again for each element around it, so that 100,000 nested elements, 900 KB of
        HTML, would give 10¹⁰ characters."""
        out: list[str] = []
        total = 0
        for item in self.items:
            if isinstance(item, _Block):
                for text in self._segment(item).iter_texts():
                    total += len(text)
                    if limit is not None and total > limit:
                        raise TextLimitExceeded(total)
                    out.append(text)
        return out

    def render(self, translations: list[str]) -> str:
        """The document with each text of texts() replaced by its translation."""
        queue = iter(translations)
        out: list[str] = []
        for item in self.items:
            if isinstance(item, str):
                out.append(item)
                continue
            text, spans = self._segment(item).translate(queue)
            spans = _unclosed_outside(item.inlines, spans)
            out.append(_insert(text, [(i, s, e) for i, (s, e) in zip(item.inlines, spans, strict=True)]))
        return "".join(out)


def _unclosed_outside(inlines: list[_Inline], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """An element left open at the block's end encloses the rest of the block: placed inside another
    element of the translation, it would cross it. It moves back to the start of the outermost
    element around it: of the closed places sorted by start, the first whose end reaches past it,
    found by bisection on the ends' running maximum (a scan of every place for every open element
    took the square of their number: 1.8 s for 4,000)."""
    closed = sorted(span for span, inline in zip(spans, inlines, strict=True) if not inline.unclosed)
    reach = list(itertools.accumulate((end for _, end in closed), max))  # the furthest end of the first i + 1
    moved = list(spans)
    for k, inline in enumerate(inlines):
        if inline.unclosed:
            at = spans[k][0]
            first = bisect.bisect_right(reach, at)  # the first place that ends after `at`
            if first < len(closed) and closed[first][0] < at:
                moved[k] = (closed[first][0], closed[first][0])
    return moved


def _locate(
    source: str,
    target: str,
    start: int,
    end: int,
    inner_translation: str | None,
    taken: _Places,
) -> tuple[int, int]:
    own = (start, end)
    start = max(0, min(len(source), start))
    end = max(start, min(len(source), end))
    inner = source[start:end].strip()
    if inner_translation and inner[-1:] not in _END_PUNCTUATION:  # a phrase translated alone gains a full stop
        inner_translation = inner_translation.rstrip("".join(_END_PUNCTUATION)).rstrip()
    for candidate in (inner, inner_translation, _LEADING_ARTICLE.sub("", inner_translation or "")):
        if not candidate:
            continue
        span = taken.first_fitting(candidate, candidate != inner, own)
        if span is not None:
            return span
    return _proportional(source, target, start, end, own, taken)


class _Places:
    """The places of a block's elements in its translation `target`, each non-empty, with the source
    span of the element put there. They nest or are disjoint: so the markup stays well formed."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._source: dict[tuple[int, int], tuple[int, int]] = {}
        self._by_start: list[tuple[int, int]] = []  # (start, end), sorted
        self._by_end: list[tuple[int, int]] = []  # (end, start), sorted
        self._searches: dict[tuple[str, bool], Iterator[tuple[int, int]]] = {}  # phrase, ignoring case -> its search

    @functools.cached_property
    def _lowered(self) -> str:
        return self.target.lower()

    @functools.cached_property
    def word_edges(self) -> tuple[list[int], list[int]]:
        """The starts and the ends of the words of the translation, each ascending: made once per
        block, not once per element placed in it."""
        spans = [m.span() for m in _WORD.finditer(self.target)] or [(0, 0)]
        return [a for a, _ in spans], [b for _, b in spans]

    def add(self, span: tuple[int, int], own: tuple[int, int]) -> None:
        """The element of source span `own` put at `span`; an empty span is no place: it nests with
        any other, and any number of elements may share its offset."""
        if span[0] < span[1] and span not in self._source:
            self._source[span] = own
            bisect.insort(self._by_start, span)
            bisect.insort(self._by_end, (span[1], span[0]))

    def fits(self, span: tuple[int, int], own: tuple[int, int]) -> bool:
        """Whether an element of source span `own` may go at `span`: it crosses no place taken (nests
        with each, or is disjoint), and it is not another's place, unless that one held the same
        source text (`<b><i>dog</i></b>`). Without the second rule, a phrase that recurs ("the dog",
        a link's "here") put every element on its first occurrence, one inside the other.

        Only the places that begin or end strictly inside `span` can cross it: found by bisection,
        where checking every place took the square of their number (a paragraph of thousands of runs)."""
        if self._source.get(span, own) != own:
            return False
        x, y = span
        if x == y:  # an empty span nests with any other
            return True
        if any(start < x for _, start in _strictly_between(self._by_end, x, y)):  # begins before, ends inside
            return False
        return not any(end > y for _, end in _strictly_between(self._by_start, x, y))  # begins inside, ends after

    def first_fitting(self, phrase: str, ignore_case: bool, own: tuple[int, int]) -> tuple[int, int] | None:
        """The first occurrence of `phrase` in the translation where the element of source span `own`
        fits; None where none is left. Each phrase's search goes on from where its last call stopped:
        an occurrence passed over stays unfit, since places are only ever added, and the one returned
        becomes the caller's place. Started afresh each time, a phrase that recurs (a link's "here",
        thousands of times) took the square of its count."""
        key = (phrase, ignore_case)
        if key not in self._searches:
            self._searches[key] = self._occurrences(phrase, ignore_case)
        for span in self._searches[key]:
            if self.fits(span, own):
                return span
        return None

    def _occurrences(self, phrase: str, ignore_case: bool) -> Iterator[tuple[int, int]]:
        """The spans of `phrase` in the translation, left to right and not overlapping, found by `str.find`: a
        regular expression of each phrase compiled in time proportional to its length, and deeply
        nested elements each have a phrase nearly as long as the block (64 s for 4,000 of them). In
        lower case where lowering keeps every character's offset (it does unless a character
        lowers to two, as İ does), else by a case-blind regular expression."""
        target = self.target
        if ignore_case:
            if len(self._lowered) != len(target) or len(phrase.lower()) != len(phrase):
                yield from (m.span() for m in re.finditer(re.escape(phrase), target, flags=re.IGNORECASE))
                return
            target, phrase = self._lowered, phrase.lower()
        at = target.find(phrase)
        while at != -1:
            yield at, at + len(phrase)
            at = target.find(phrase, at + len(phrase))


def _strictly_between(pairs: list[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """The pairs of sorted `pairs` whose first item lies strictly between `low` and `high`."""
    return pairs[bisect.bisect_right(pairs, (low, math.inf)) : bisect.bisect_left(pairs, (high, -math.inf))]


def _nearest(edges: list[int], position: float) -> int:
    """The edge nearest `position`; of two as near, the first."""
    i = bisect.bisect_left(edges, position)
    if i == len(edges) or (i > 0 and position - edges[i - 1] <= edges[i] - position):
        return edges[i - 1]
    return edges[i]


def _proportional(
    source: str,
    target: str,
    start: int,
    end: int,
    own: tuple[int, int],
    taken: _Places,
) -> tuple[int, int]:
    scale = len(target) / max(1, len(source))
    starts, ends = taken.word_edges
    if start == end:
        span = (_nearest(starts, start * scale),) * 2
    else:  # a paired element keeps at least one word inside it
        a = _nearest(starts, start * scale)
        following = bisect.bisect_left(starts, a)
        first_word_end = ends[following] if following < len(starts) else len(target)
        span = (a, max(first_word_end, _nearest(ends, end * scale)))
    if taken.fits(span, own):
        return span
    return (len(target), len(target))  # no well-formed place left: empty, at the end


def _insert(text: str, placed: list[tuple[_Inline, int, int]]) -> str:
    """Escaped text with each inline's tags at its offsets; outer elements open first and close last."""
    # (position, closes before opens, rank, then wider first or narrower first, then order, markup)
    events: list[tuple[int, int, int, int, int, str]] = []
    for n, (inline, start, end) in enumerate(placed):
        width = end - start
        if inline.unclosed:  # before every element at its offset; those left open earlier, first
            events.append((start, 1, 0, 0, n, inline.open_raw))
        elif start == end:  # empty: the pair stays together, open then close, inside wider ones
            events.append((start, 1, 1, 0, -n, inline.open_raw + inline.close_raw))
        else:
            events.append((start, 1, 1, -width, -n, inline.open_raw))
            if inline.close_raw:  # of two as wide, the one opened first closes last
                events.append((end, 0, 0, width, n, inline.close_raw))
    out, cursor = [], 0
    for position, *_, markup in sorted(events):
        out.append(html.escape(text[cursor:position], quote=False))
        out.append(markup)
        cursor = position
    out.append(html.escape(text[cursor:], quote=False))
    return "".join(out)
