"""Text in, text out: normalisation, tokenization, input splitting, token-budget batching, detokenization."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from service import conventions as cv
from service.runtime.beam import DecodeOptions, Hypothesis, beam_search
from service.runtime.sessions import OnnxModel
from service.textnorm import normalize

# Longer inputs are cut at word boundaries into pieces of at most this many tokens,
# translated separately and rejoined: never truncated.
MAX_SOURCE_TOKENS = 200
DEFAULT_BATCH_TOKENS = 2048


@dataclass(frozen=True)
class Translation:
    text: str
    score: float
    source_tokens: int
    target_tokens: int


@dataclass(frozen=True)
class _Segment:
    text_index: int
    ids: list[int]  # ends with EOS


class Translator:
    def __init__(self, model: OnnxModel, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.batch_tokens = batch_tokens
        self._word_start = [
            self.tokenizer.id_to_piece(i).startswith("▁") for i in range(self.tokenizer.get_piece_size())
        ]

    @classmethod
    def load(cls, model_dir: Path, intra_op_threads: int = 0, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Translator:
        return cls(OnnxModel(model_dir, intra_op_threads), batch_tokens)

    def split_long(self, ids: list[int]) -> list[list[int]]:
        """Cut a token sequence into pieces of at most MAX_SOURCE_TOKENS, at word starts when possible."""
        pieces, start = [], 0
        while len(ids) - start > MAX_SOURCE_TOKENS:
            cut = start + MAX_SOURCE_TOKENS
            while cut > start + MAX_SOURCE_TOKENS // 2 and not self._word_start[ids[cut]]:
                cut -= 1
            if cut == start + MAX_SOURCE_TOKENS // 2:
                cut = start + MAX_SOURCE_TOKENS  # no word start in reach: cut inside the word
            pieces.append(ids[start:cut])
            start = cut
        pieces.append(ids[start:])
        return pieces

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped by length so that rows x longest source <= batch_tokens (a longer one rides alone)."""
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            if current and lengths[i] * (len(current) + 1) > self.batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def translate(
        self,
        texts: Sequence[str],
        target: str,
        options: DecodeOptions | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[Translation]]:
        """n_best translations per text into `target`, in input order. Empty text gives empty text.

        `progress(done, total)` is called after each batch, counting segments (long texts split).
        """
        options = options or DecodeOptions()
        tag = cv.LANG_TAG_IDS[target]
        segments: list[_Segment] = []
        for index, text in enumerate(texts):
            ids = self.tokenizer.encode(normalize(text))
            if ids:
                segments += [_Segment(index, [*piece, cv.EOS_ID]) for piece in self.split_long(ids)]
        results: list[list[Hypothesis]] = [[] for _ in segments]
        done = 0
        for batch in self.batches([len(s.ids) for s in segments]):
            hyps = beam_search(self.model, [segments[i].ids for i in batch], [tag] * len(batch), options)
            for i, h in zip(batch, hyps, strict=True):
                results[i] = h
            done += len(batch)
            if progress:
                progress(done, len(segments))
        return self._join(texts, segments, results, options.n_best)

    def _join(
        self, texts: Sequence[str], segments: Sequence[_Segment], results: list[list[Hypothesis]], n_best: int
    ) -> list[list[Translation]]:
        per_text: list[list[int]] = [[] for _ in texts]
        for i, seg in enumerate(segments):
            per_text[seg.text_index].append(i)
        out: list[list[Translation]] = []
        for parts in per_text:
            if not parts:
                out.append([Translation("", 0.0, 0, 0)])
                continue
            if len(parts) == 1:
                hyps = results[parts[0]]
                src = len(segments[parts[0]].ids)
                out.append([self._translation(h.tokens, h.score, src) for h in hyps[:n_best]])
                continue
            # A split text: its pieces' best hypotheses, joined; the score is their mean.
            tokens = [t for p in parts for t in (results[p][0].tokens if results[p] else [])]
            text = " ".join(self.tokenizer.decode(results[p][0].tokens) for p in parts if results[p])
            score = sum(results[p][0].score for p in parts if results[p]) / len(parts)
            src = sum(len(segments[p].ids) for p in parts)
            out.append([Translation(text, score, src, len(tokens) + len(parts))])
        return out

    def _translation(self, tokens: list[int], score: float, source_tokens: int) -> Translation:
        return Translation(self.tokenizer.decode(tokens), score, source_tokens, len(tokens) + 1)
