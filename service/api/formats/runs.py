"""A paragraph as styled runs and void items, translated through the one markup engine.

Every office format reads a paragraph into `Text` runs (text with the style it carries: run
properties, the spans and links around it) and `Void` items (tabs, breaks, images, fields,
bookmarks: kept as they are). The runs that differ from the paragraph's dominant style become
the spans of a markup Segment, exactly as inline tags are in HTML, so a paragraph is translated
as a whole and its formatting is placed on the matching words of the translation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.api.markup import Segment, runs_of

S = TypeVar("S")  # what a format needs to rebuild a run's style
V = TypeVar("V")  # what a format needs to put a void item back


@dataclass(frozen=True)
class Text(Generic[S]):
    text: str
    key: Hashable  # equal keys: the same formatting
    style: S


@dataclass(frozen=True)
class Void(Generic[V]):
    item: V


Item = Text[S] | Void[V]


@dataclass(frozen=True)
class _Group(Generic[S]):
    key: Hashable
    style: S


class RunParagraph(Generic[S, V]):
    def __init__(self, items: list[Item[S, V]]) -> None:
        self.items = items
        texts = [i for i in items if isinstance(i, Text)]
        weight: Counter[Hashable] = Counter()
        for run in texts:
            weight[run.key] += len(run.text)
        self.base: _Group[S] | None = None
        if texts:
            key = max(weight, key=lambda k: weight[k])  # ties: the first met (Counter keeps insertion order)
            self.base = _Group(key, next(r.style for r in texts if r.key == key))
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        self._payloads: list[_Group[S] | Void[V]] = []
        position = 0
        for item in items:
            if isinstance(item, Void):
                spans.append((position, position))
                self._payloads.append(item)
                continue
            parts.append(item.text)
            end = position + len(item.text)
            if item.key != (self.base.key if self.base else None) and item.text:
                last = self._payloads[-1] if self._payloads else None
                if isinstance(last, _Group) and last.key == item.key and spans[-1][1] == position:
                    spans[-1] = (spans[-1][0], end)  # runs split without a change of style are one span
                else:
                    spans.append((position, end))
                    self._payloads.append(_Group(item.key, item.style))
            position = end
        self.segment = Segment("".join(parts), spans)

    def texts(self) -> list[str]:
        return self.segment.texts()

    def translate(self, queue: Iterator[str]) -> list[Item[S, V]] | None:
        """The paragraph's new items, or None when the translation leaves it as it was."""
        text, spans = self.segment.translate(queue)
        if text == self.segment.text and spans == self.segment.spans:
            return None
        placed = [(payload, start, end) for payload, (start, end) in zip(self._payloads, spans, strict=True)]
        out: list[Item[S, V]] = []
        for piece, payload in runs_of(text, placed):
            if isinstance(payload, Void):
                out.append(payload)
                continue
            group = payload or self.base
            if group is None or not piece:  # no text to carry (a span the engine could not place)
                continue
            previous = out[-1] if out else None
            if isinstance(previous, Text) and previous.key == group.key:
                out[-1] = Text(previous.text + piece, group.key, group.style)
            else:
                out.append(Text(piece, group.key, group.style))
        return out


E = TypeVar("E")  # a format's paragraph element


class ParagraphDocument(ABC, Generic[E, S, V]):
    """A package whose text is its paragraphs: a format reads them, then writes each one back and saves."""

    paragraphs: list[tuple[E, RunParagraph[S, V]]]

    def texts(self) -> list[str]:
        return [text for _, paragraph in self.paragraphs for text in paragraph.texts()]

    def render(self, translations: list[str]) -> bytes:
        queue = iter(translations)
        for element, paragraph in self.paragraphs:
            items = paragraph.translate(queue)
            if items is not None:
                self.write_paragraph(element, items)
        return self.save()

    @abstractmethod
    def write_paragraph(self, element: E, items: list[Item[S, V]]) -> None: ...

    @abstractmethod
    def save(self) -> bytes: ...
