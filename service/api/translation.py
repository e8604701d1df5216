"""Texts in, translations out: the model serving each direction, sentence splitting, tokenization,
the scheduler, rejoining."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from service.api.models import ModelSet, Requested, ServedModel
from service.api.scheduler import Scheduler, Sentence
from service.runtime.sentences import Layout, split_sentences
from service.runtime.translator import Prepared, Translation, Translator


@dataclass(frozen=True)
class Alternative:
    text: str
    score: float


@dataclass(frozen=True)
class TextTranslation:
    text: str
    score: float
    alternatives: list[Alternative]  # the next best, without the best
    source_tokens: int
    target_tokens: int


@dataclass(frozen=True)
class _Plan:
    layouts: list[Layout | None]  # None: passed through unchanged
    prepared: dict[tuple[int, int], Prepared]  # (text, sentence) -> its source pieces
    pieces: list[list[int]]
    owners: list[tuple[int, int]]  # (text, sentence) of each piece
    piece_texts: list[str]


# Up to this many characters in a request, splitting and tokenizing run on the event loop
# (well under a millisecond); longer requests go to a worker thread so as not to hold it.
INLINE_PLAN_CHARS = 1000


class TranslationService:
    def __init__(self, models: ModelSet, scheduler: Scheduler, default_beam: int = 0) -> None:
        self.models = models
        self.scheduler = scheduler
        self.default_beam = default_beam

    async def translate(
        self, texts: Sequence[str], sources: Sequence[str], target: str, requested: Requested, deadline: float
    ) -> list[TextTranslation]:
        """One result per text. `sources` gives each text's language; a text already in `target`
        comes back unchanged. Texts go to the model that serves their direction (routes have
        checked that one does), each model's texts through the shared scheduler at once."""
        groups: dict[str, list[int]] = {}
        for i, (text, source) in enumerate(zip(texts, sources, strict=True)):
            if source != target and text.strip():
                groups.setdefault(self.models.for_direction(source, target).name, []).append(i)
        out = [TextTranslation(text, 0.0, [], 0, 0) for text in texts]
        if not groups:
            return out
        names = list(groups)
        results = await asyncio.gather(*(
            self._translate_with(self.models.by_name(name), [texts[i] for i in groups[name]],
                                 [sources[i] for i in groups[name]], target, requested, deadline)
            for name in names
        ))  # fmt: skip
        for name, translated in zip(names, results, strict=True):
            for i, result in zip(groups[name], translated, strict=True):
                out[i] = result
        return out

    def _plan(self, translator: Translator, texts: Sequence[str], sources: Sequence[str], target: str) -> _Plan:
        layouts: list[Layout | None] = []
        prepared: dict[tuple[int, int], Prepared] = {}
        pieces: list[list[int]] = []
        owners: list[tuple[int, int]] = []
        piece_texts: list[str] = []
        for i, (text, source) in enumerate(zip(texts, sources, strict=True)):
            if source == target or not text.strip():
                layouts.append(None)
                continue
            layout = split_sentences(text, source)
            layouts.append(layout)
            for j, sentence in enumerate(layout.sentences):
                prepared[(i, j)] = translator.prepare(sentence)
                for piece in prepared[(i, j)].pieces:
                    pieces.append(piece)
                    owners.append((i, j))
                    piece_texts.append(sentence)
        return _Plan(layouts, prepared, pieces, owners, piece_texts)

    async def _translate_with(
        self,
        model: ServedModel,
        texts: Sequence[str],
        sources: Sequence[str],
        target: str,
        requested: Requested,
        deadline: float,
    ) -> list[TextTranslation]:
        translator = model.translator
        options = model.options(requested, self.default_beam)
        if sum(len(text) for text in texts) <= INLINE_PLAN_CHARS:
            plan = self._plan(translator, texts, sources, target)  # a thread hop would cost more than the work
        else:
            plan = await asyncio.to_thread(self._plan, translator, texts, sources, target)
        queued = [
            Sentence(ids, target, f"{sources[i]}-{target}", text, model.name)
            for ids, (i, _), text in zip(plan.pieces, plan.owners, plan.piece_texts, strict=True)
        ]
        hyps = await self.scheduler.translate(queued, options, deadline)
        grouped: dict[tuple[int, int], list[int]] = {}
        for p, owner in enumerate(plan.owners):
            grouped.setdefault(owner, []).append(p)
        out = []
        for i, (text, layout) in enumerate(zip(texts, plan.layouts, strict=True)):
            if layout is None:
                out.append(TextTranslation(text, 0.0, [], 0, 0))
                continue
            sentences: list[list[Translation]] = []
            for j in range(len(layout.sentences)):
                parts = grouped.get((i, j), [])
                sentences.append(translator.combine(plan.prepared[(i, j)], [hyps[p] for p in parts], options.n_best))
            out.append(_assemble(layout, sentences, options.n_best))
        return out


def _assemble(layout: Layout, sentences: list[list[Translation]], n_best: int) -> TextTranslation:
    if not sentences:  # whitespace only
        return TextTranslation(layout.join([]), 0.0, [], 0, 0)
    ranked = []
    for k in range(min(n_best, max(len(s) for s in sentences))):
        chosen = [s[min(k, len(s) - 1)] for s in sentences]
        ranked.append(Alternative(layout.join([t.text for t in chosen]), sum(t.score for t in chosen) / len(chosen)))
    best = [s[0] for s in sentences]
    seen = {ranked[0].text}
    alternatives = []
    for alt in ranked[1:]:
        if alt.text not in seen:
            seen.add(alt.text)
            alternatives.append(alt)
    return TextTranslation(
        ranked[0].text,
        ranked[0].score,
        alternatives,
        sum(t.source_tokens for t in best),
        sum(t.target_tokens for t in best),
    )
