"""Texts in, translations out: the model serving each direction, sentence splitting, tokenization,
the scheduler, rejoining."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from service.api.metrics import Metrics
from service.api.models import ModelSet, Requested, ServedModel
from service.api.residency import Residency
from service.api.scheduler import Scheduler, Sentence
from service.pivot import Route, legs
from service.runtime.beam import DecodeOptions
from service.runtime.degenerate import Quality
from service.runtime.glossary import Glossary, verbatim_glossary
from service.runtime.sentences import Layout, split_sentences
from service.runtime.translator import Prepared, Translation, Translator

T = TypeVar("T")


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
    quality: Quality = "ok"  # low: a sentence got only degenerate hypotheses


@dataclass(frozen=True)
class _Plan:
    prepared: dict[tuple[int, int], Prepared]  # (text, sentence) -> its source pieces
    pieces: list[list[int]]
    owners: list[tuple[int, int]]  # (text, sentence) of each piece
    piece_texts: list[str]


# Up to this many characters in a request, splitting into sentences and tokenizing run on the
# event loop (well under a millisecond); longer requests go to a worker thread so as not to hold it.
INLINE_PLAN_CHARS = 1000


async def off_loop_if_long(characters: int, work: Callable[[], T]) -> T:
    """`work`'s result: done on the event loop for a request of up to INLINE_PLAN_CHARS characters
    (a thread hop would cost more than the work), in a worker thread for a longer one."""
    return work() if characters <= INLINE_PLAN_CHARS else await asyncio.to_thread(work)


class TranslationService:
    def __init__(
        self,
        models: ModelSet,
        residency: Residency,
        scheduler: Scheduler,
        default_beam: int = 0,
        repetition_guard: bool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.models = models
        self.residency = residency
        self.scheduler = scheduler
        self.default_beam = default_beam
        self.repetition_guard = repetition_guard  # the operator's, over every model's own; None: each model's
        self.metrics = metrics

    async def translate(
        self, texts: Sequence[str], sources: Sequence[str], target: str, requested: Requested, deadline: float
    ) -> list[TextTranslation]:
        """One result per text. `sources` gives each text's language; a text already in `target`
        comes back unchanged. Texts go to the model that serves their direction (routes have
        checked that one does), each model's texts through the shared scheduler at once."""
        groups: dict[str, list[int]] = {}  # a direct direction's texts, by the model that serves it
        chains: dict[Route, list[int]] = {}  # a pivoted direction's texts, by its route
        for i, (text, source) in enumerate(zip(texts, sources, strict=True)):
            if source != target and text.strip():
                route = self.models.route(source, target)
                if len(route) == 2:
                    groups.setdefault(self.models.for_direction(source, target).name, []).append(i)
                else:
                    chains.setdefault(route, []).append(i)
        out = [TextTranslation(text, 0.0, [], 0, 0) for text in texts]
        work = [
            self._translate_with(name, [texts[i] for i in indices],
                                 [sources[i] for i in indices], target, requested, deadline)
            for name, indices in groups.items()
        ] + [self._translate_through(route, [texts[i] for i in indices], requested, deadline)
             for route, indices in chains.items()]  # fmt: skip
        results = [await work[0]] if len(work) == 1 else await asyncio.gather(*work)  # one model: no task to make
        for indices, translated in zip([*groups.values(), *chains.values()], results, strict=True):
            for i, result in zip(indices, translated, strict=True):
                out[i] = result
        return out

    async def _translate_through(
        self, route: Route, texts: Sequence[str], requested: Requested, deadline: float
    ) -> list[TextTranslation]:
        """Pivoting: each leg's model translates the previous leg's best output, every leg through the
        scheduler like any request. The n-best are the last leg's n-best of that one text, and a score
        is the sum of the legs' scores. A glossary's terms are placed by the first leg (its targets are
        in the final language) and kept verbatim by the others."""
        if self.metrics is not None:
            self.metrics.child(self.metrics.pivoted, "-".join(route)).inc(len(texts))
        current: Sequence[str] = texts
        carried = [0.0] * len(texts)
        glossary = requested.glossary
        out: list[TextTranslation] = []
        for k, (source, target) in enumerate(legs(route)):
            last = k == len(route) - 2
            leg = requested if last else replace(requested, n_best=1)
            if k and glossary is not None:
                leg = replace(leg, glossary=verbatim_glossary(glossary))
            name = self.models.for_direction(source, target).name  # each leg is a use of its model
            out = await self._translate_with(name, current, [source] * len(current), target, leg, deadline)
            if not last:
                current, carried = [r.text for r in out], [c + r.score for c, r in zip(carried, out, strict=True)]
        return [
            replace(r, score=r.score + c, alternatives=[replace(a, score=a.score + c) for a in r.alternatives])
            for r, c in zip(out, carried, strict=True)
        ]

    @staticmethod
    def _layouts(texts: Sequence[str], sources: Sequence[str], target: str) -> list[Layout | None]:
        """Each text's sentences; None: passed through unchanged."""
        return [
            None if source == target or not text.strip() else split_sentences(text, source)
            for text, source in zip(texts, sources, strict=True)
        ]

    @staticmethod
    def _plan(translator: Translator, sentences: dict[tuple[int, int], str], glossary: Glossary | None = None) -> _Plan:
        prepared: dict[tuple[int, int], Prepared] = {}
        pieces: list[list[int]] = []
        owners: list[tuple[int, int]] = []
        piece_texts: list[str] = []
        for owner, sentence in sentences.items():
            prepared[owner] = translator.prepare(sentence, glossary)
            for piece in prepared[owner].pieces:
                pieces.append(piece)
                owners.append(owner)
                piece_texts.append(sentence)
        return _Plan(prepared, pieces, owners, piece_texts)

    async def _run(
        self,
        model: ServedModel,
        sentences: dict[tuple[int, int], str],
        sources: Sequence[str],
        target: str,
        options: DecodeOptions,
        deadline: float,
        glossary: Glossary | None,
    ) -> dict[tuple[int, int], list[Translation]]:
        """Each sentence's n-best translations, its pieces through the shared scheduler."""
        translator = model.translator
        plan = await off_loop_if_long(
            sum(len(sentence) for sentence in sentences.values()), lambda: self._plan(translator, sentences, glossary)
        )
        queued = [
            Sentence(ids, target, f"{sources[i]}-{target}", text, model.name)
            for ids, (i, _), text in zip(plan.pieces, plan.owners, plan.piece_texts, strict=True)
        ]
        hyps = await self.scheduler.translate(queued, options, deadline)
        grouped: dict[tuple[int, int], list[int]] = {owner: [] for owner in sentences}
        for p, owner in enumerate(plan.owners):
            grouped[owner].append(p)
        return {
            owner: translator.combine(plan.prepared[owner], [hyps[p] for p in parts], options.n_best)
            for owner, parts in grouped.items()
        }

    async def _translate_with(
        self,
        name: str,
        texts: Sequence[str],
        sources: Sequence[str],
        target: str,
        requested: Requested,
        deadline: float,
    ) -> list[TextTranslation]:
        """On the model `name`, loaded first if it is not (and held until done: never unloaded meanwhile)."""
        async with self.residency.use(name, deadline) as model:
            return await self._translate_on(model, texts, sources, target, requested, deadline)

    async def _translate_on(
        self,
        model: ServedModel,
        texts: Sequence[str],
        sources: Sequence[str],
        target: str,
        requested: Requested,
        deadline: float,
    ) -> list[TextTranslation]:
        options = model.options(requested, self.default_beam, self.repetition_guard)
        characters = sum(len(text) for text in texts)
        layouts = await off_loop_if_long(characters, lambda: self._layouts(texts, sources, target))
        sentences = {
            (i, j): sentence
            for i, layout in enumerate(layouts)
            if layout is not None
            for j, sentence in enumerate(layout.sentences)
        }
        translated = await self._run(model, sentences, sources, target, options, deadline, None)
        glossary = requested.glossary
        if glossary is not None:  # a sentence whose translation lacks a term goes again, its terms as placeholders
            again = {k: s for k, s in sentences.items() if glossary.missing(s, translated[k][0].text)}
            if again:
                translated.update(await self._run(model, again, sources, target, options, deadline, glossary))
        out = []
        for i, (text, layout) in enumerate(zip(texts, layouts, strict=True)):
            if layout is None:
                out.append(TextTranslation(text, 0.0, [], 0, 0))
                continue
            out.append(_assemble(layout, [translated[(i, j)] for j in range(len(layout.sentences))], options.n_best))
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
        "low" if any(t.quality == "low" for t in best) else "ok",
    )
