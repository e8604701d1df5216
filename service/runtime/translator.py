"""Text in, text out: normalisation, tokenization, input splitting, token-budget batching, detokenization."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from service.runtime.beam import DecodeOptions, Hypothesis, beam_search
from service.runtime.degenerate import Quality
from service.runtime.glossary import Glossary
from service.runtime.names import keep_name
from service.runtime.protect import protect, restore
from service.runtime.sessions import OnnxModel
from service.runtime.widths import measure_small_searches
from service.textnorm import has_letters, normalize

# Longer inputs are cut at word boundaries into pieces of at most this many tokens,
# translated separately and rejoined: never truncated.
MAX_SOURCE_TOKENS = 200
DEFAULT_BATCH_TOKENS = 2048
# What a loaded model measures its small searches on: what it means does not matter, only its length.
WIDTH_PROBE_TEXT = "A man in a blue shirt is standing on a ladder."
WIDTH_PROBE_BEAM = 5


@dataclass(frozen=True)
class Translation:
    text: str
    score: float
    source_tokens: int
    target_tokens: int
    quality: Quality = "ok"  # low: some piece got only degenerate hypotheses (service/runtime/degenerate.py)


@dataclass(frozen=True)
class Prepared:
    pieces: list[list[int]]  # source ids, each ending with EOS where the model's sources do
    protected: list[str]  # spans held out as placeholders (service/runtime/protect.py)
    verbatim: str = ""  # what comes back for a text the model does not see (no letters)
    source: str = ""  # the normalised text
    # Per piece, the source pieces as cut from the text (without EOS), where unknown output tokens
    # are replaced from them (DecodeOptions.replace_unknowns).
    surfaces: list[list[str]] = field(default_factory=list)


def _cut_like(surface: list[str], split: Sequence[Sequence[int]]) -> list[list[str]]:
    """`surface`, one entry per id, cut where `split` (a partition of the ids, in order) cuts them;
    nothing without a surface."""
    if not surface:
        return []
    ends = list(itertools.accumulate(len(piece) for piece in split))
    return [surface[end - len(piece) : end] for piece, end in zip(split, ends, strict=True)]


@dataclass(frozen=True)
class _Segment:
    text_index: int
    ids: list[int]  # ends with EOS


class Translator:
    def __init__(self, model: OnnxModel, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> None:
        self.model = model
        self.languages = model.languages
        self.tokenizer = model.tokenizer
        self.batch_tokens = batch_tokens
        self._word_start = self.tokenizer.word_starts()
        self._suffix = [model.eos_id] if model.manifest.source_eos else []
        self._prefix = model.manifest.source_prefix
        self._unk = model.manifest.special_ids.unk
        self._keeps_surfaces = model.manifest.generation.replace_unknowns  # what <unk> is replaced from

    @classmethod
    def load(
        cls,
        model_dir: Path,
        intra_op_threads: int = 0,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        low_memory: bool = False,
        packed: Path | bool = True,
    ) -> Translator:
        """packed: where the graphs' packed weights are kept (sessions.OnnxModel). The model's small
        searches take the number of threads measured faster for them here (widths.py)."""
        translator = cls(OnnxModel(model_dir, intra_op_threads, low_memory=low_memory, packed=packed), batch_tokens)
        translator.measure_small_searches()
        return translator

    def measure_small_searches(self) -> bool | None:
        """Whether one sentence at beam 5 runs faster on one thread than on all (widths.py)."""
        targets = list(self.languages.tag_ids)
        pieces = self.prepare(WIDTH_PROBE_TEXT).pieces
        if not targets or not pieces:
            return None
        options = DecodeOptions(beam_size=WIDTH_PROBE_BEAM)
        return measure_small_searches(self.model, lambda: self.search(pieces[:1], targets[:1], options))

    def _is_word_start(self, token: int) -> bool:
        return token < len(self._word_start) and self._word_start[token]

    def split_long(self, ids: list[int]) -> list[list[int]]:
        """Cut a token sequence into pieces of at most MAX_SOURCE_TOKENS, at word starts when possible."""
        pieces, start = [], 0
        while len(ids) - start > MAX_SOURCE_TOKENS:
            cut = start + MAX_SOURCE_TOKENS
            while cut > start + MAX_SOURCE_TOKENS // 2 and not self._is_word_start(ids[cut]):
                cut -= 1
            if cut == start + MAX_SOURCE_TOKENS // 2:
                cut = start + MAX_SOURCE_TOKENS  # no word start in reach: cut inside the word
            pieces.append(ids[start:cut])
            start = cut
        pieces.append(ids[start:])
        return pieces

    @property
    def streams(self) -> int:
        """Batches that decode at once, one per thread (search_batches)."""
        return self.model.threads

    def batches(self, lengths: Sequence[int], streams: int = 1) -> list[list[int]]:
        """Indices grouped by length within this translator's token budget (batches_by_length)."""
        return batches_by_length(lengths, self.batch_tokens, streams)

    def prepare(self, text: str, glossary: Glossary | None = None) -> Prepared:
        """Source pieces of one text, each ending with EOS (none for empty text), URLs, e-mail
        addresses and glossary terms held out as placeholders. A text without letters gets no
        pieces: it comes back verbatim."""
        if not has_letters(text):
            return Prepared([], [], text)
        source = normalize(text)
        protected = protect(source, glossary)
        if self._keeps_surfaces:
            ids, surface = self.tokenizer.encode_pieces(protected.text)
        else:
            ids, surface = self.tokenizer.encode(protected.text), []
        split = self.split_long(ids) if ids else []
        pieces = [[*piece, *self._suffix] for piece in split]
        return Prepared(pieces, protected.spans, source=source, surfaces=_cut_like(surface, split))

    def search(
        self, sources: Sequence[list[int]], targets: Sequence[str], options: DecodeOptions
    ) -> list[list[Hypothesis]]:
        """One model batch: n-best hypotheses per source piece. The decoder starts from each target's
        start token (mtserve's language tag, Marian's pad) and its forced prefix, if any; the source
        comes after the target's source prefix, if any."""
        starts, forced = self.model.languages.tag_ids, self.model.manifest.decoder_prefix
        spans: list[tuple[int, int]] = []
        if options.replace_unknowns and self.model.has_alignment:  # each source's own pieces
            before = [len(self._prefix.get(t, [])) for t in targets]
            spans = [(b, b + len(s) - len(self._suffix)) for b, s in zip(before, sources, strict=True)]
        if self._prefix:
            sources = [[*self._prefix.get(t, []), *s] for s, t in zip(sources, targets, strict=True)]
        prefixes = [forced.get(t, []) for t in targets] if forced else []
        return beam_search(self.model, sources, [starts[t] for t in targets], options, prefixes, spans)

    def search_batches(
        self, batches: Sequence[Sequence[list[int]]], targets: Sequence[Sequence[str]], options: DecodeOptions
    ) -> Iterator[tuple[int, list[list[Hypothesis]]]]:
        """(index, hypotheses) of each batch, as each finishes.

        With several threads configured, that many batches decode at once, each on one thread
        (sessions.py: a run takes every thread only while nothing else decodes): one batch's host
        work between its steps then overlaps another's graph runs, where a single batch on every
        thread leaves the cores idle for it (docs/BENCHMARKS.md). A batch's hypotheses do not depend
        on which thread ran it or on what ran beside it.
        """
        streams = min(self.streams, len(batches))
        if streams <= 1:
            for index, (batch, batch_targets) in enumerate(zip(batches, targets, strict=True)):
                yield index, self.search(batch, batch_targets, options)
            return
        pool = ThreadPoolExecutor(streams, thread_name_prefix="mtserve-batch")
        try:
            running: dict[Future[list[list[Hypothesis]]], int] = {
                pool.submit(self.search, batch, batch_targets, options): index
                for index, (batch, batch_targets) in enumerate(zip(batches, targets, strict=True))
            }
            for future in as_completed(running):
                yield running[future], future.result()
        finally:  # on an error, or a caller that stops early, the batches not started never start
            pool.shutdown(wait=True, cancel_futures=True)

    def translate(
        self,
        texts: Sequence[str],
        target: str,
        options: DecodeOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
        glossary: Glossary | None = None,
    ) -> list[list[Translation]]:
        """n_best translations per text into `target`, in input order. Empty text gives empty text.

        `progress(done, total)` is called after each batch, counting segments (long texts split).
        With a glossary, a text whose translation lacks a term's target is translated again with
        its terms as placeholders (service/runtime/glossary.py).
        """
        options = options or DecodeOptions()
        out = self._translate(texts, target, options, progress, None)
        if glossary is not None:
            again = [k for k, text in enumerate(texts) if out[k] and glossary.missing(text, out[k][0].text)]
            redone = self._translate([texts[k] for k in again], target, options, None, glossary)
            for k, result in zip(again, redone, strict=True):
                out[k] = result
        return out

    def _translate(
        self,
        texts: Sequence[str],
        target: str,
        options: DecodeOptions,
        progress: Callable[[int, int], None] | None,
        glossary: Glossary | None,
    ) -> list[list[Translation]]:
        prepared = [self.prepare(text, glossary) for text in texts]
        segments = [_Segment(index, piece) for index, p in enumerate(prepared) for piece in p.pieces]
        results: list[list[Hypothesis]] = [[] for _ in segments]
        done = 0
        # The batches decoding at once share the token budget, as the service's workers do: the
        # same memory at most as one batch at a time, and no slower (docs/BENCHMARKS.md).
        batches = self.batches([len(s.ids) for s in segments], self.streams)
        work = [[segments[i].ids for i in batch] for batch in batches]
        for index, hyps in self.search_batches(work, [[target] * len(batch) for batch in batches], options):
            for i, h in zip(batches[index], hyps, strict=True):
                results[i] = h
            done += len(batches[index])
            if progress:
                progress(done, len(segments))
        per_text: list[list[int]] = [[] for _ in texts]
        for i, seg in enumerate(segments):
            per_text[seg.text_index].append(i)
        return [
            self.combine(p, [results[i] for i in parts], options.n_best)
            for p, parts in zip(prepared, per_text, strict=True)
        ]

    def combine(self, prepared: Prepared, results: Sequence[list[Hypothesis]], n_best: int) -> list[Translation]:
        """The n best translations of one text from its pieces' hypotheses.

        A text split into pieces gets, as its k-th alternative, each piece's k-th hypothesis
        (or its last, when it has fewer) joined; the score is the pieces' mean. A text whose
        search kept no hypothesis at all (every candidate closing a loop under the repetition
        guard) comes back empty and marked low, never as no translation.
        """
        if not prepared.pieces:
            return [Translation(prepared.verbatim, 0.0, 0, 0)]
        source_tokens = sum(len(s) for s in prepared.pieces)
        out = []
        surfaces = prepared.surfaces or [[] for _ in results]
        for k in range(min(n_best, max(len(r) for r in results))):
            picked = [(r[min(k, len(r) - 1)], surface) for r, surface in zip(results, surfaces, strict=True) if r]
            chosen = [h for h, _ in picked]
            joined = " ".join(self._text(h, surface) for h, surface in picked)
            text = restore(joined, prepared.protected)
            text = keep_name(prepared.source, text)
            score = sum(h.score for h in chosen) / len(prepared.pieces)
            quality: Quality = "low" if any(h.quality == "low" for h in chosen) else "ok"
            out.append(Translation(text, score, source_tokens, sum(h.length for h in chosen), quality))
        return out or [Translation("", 0.0, source_tokens, 0, "low")]

    def _text(self, hyp: Hypothesis, surface: Sequence[str]) -> str:
        """A hypothesis's text, each unknown token replaced by the source piece it attended to most
        where the search recorded that (CTranslate2's replace_unknowns)."""
        replaced = {
            j: surface[position]
            for j, (token, position) in enumerate(zip(hyp.tokens, hyp.alignment, strict=False))
            if token == self._unk and 0 <= position < len(surface)
        }
        return self.tokenizer.decode(hyp.tokens, replaced)


def batches_by_length(lengths: Sequence[int], batch_tokens: int, streams: int = 1) -> list[list[int]]:
    """Indices grouped by length so that rows x longest source fits the token budget, which the
    `streams` batches decoding at once share (a longer one rides alone)."""
    budget = max(1, batch_tokens // streams)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
