"""A decoder step's inputs as a beam search leaves them, from random ids: for the benchmarks that
run the step graph alone (bench/profile_step.py, bench/step_time.py, bench/step_parts.py)."""

from __future__ import annotations

import argparse

import numpy as np

from service.runtime.sessions import OnnxModel, StepFeeds, step_feeds

# Beam search on test2016 (the first 200 sentences in one batch, beam 5) leaves a row's history in
# runs from one beam's slot: it moves to another slot at 0.17 to 0.22 of its positions (docs/BENCHMARKS.md).
# Drawing a position's slot anew with this chance (uniform over the beams, so the same slot a
# fifth of the time) gives 0.2; 1.0 draws every position independently, the worst case for the
# self-attention's reads through the indirection.
SEARCH_REDRAW = 0.25


def add_shape_options(parser: argparse.ArgumentParser, rows: int) -> None:
    """--rows (default `rows`), --beam, --past, --source and --redraw."""
    parser.add_argument("--rows", type=int, default=rows, help="decoder rows: sentences x beam")
    parser.add_argument("--beam", type=int, default=5, help="rows per sentence, which share its cross K/V")
    parser.add_argument("--past", type=int, default=20, help="tokens already generated")
    parser.add_argument("--source", type=int, default=20, help="source tokens")
    parser.add_argument(
        "--redraw", type=float, default=SEARCH_REDRAW,
        help=f"chance that a history position's beam is drawn anew, not the last one's kept (default {SEARCH_REDRAW}, "
        "as beam search leaves them; 1: every position drawn)",
    )  # fmt: skip


def beam_histories(rng: np.random.Generator, sentences: int, beams: int, past: int, redraw: float) -> np.ndarray:
    """[sentences, beams, past] int32: the beam whose slot holds each position of each row's history,
    in runs: each position keeps the last one's beam, or with chance `redraw` draws one anew."""
    drawn = rng.integers(0, beams, (sentences, beams, past)).astype(np.int32)
    anew = rng.random((sentences, beams, past)) < redraw
    anew[..., :1] = True
    # each position takes the beam drawn at the last position that drew anew
    last_drawn = np.maximum.accumulate(np.where(anew, np.arange(past), 0), axis=-1)
    return np.take_along_axis(drawn, last_drawn, axis=-1)


def random_step(model: OnnxModel, args: argparse.Namespace, outputs: list[str]) -> StepFeeds:
    """Feeds for one step of args.rows rows (args.beam per sentence) after args.past steps over
    sources of args.source tokens: beams with their own histories, the cache's indirection in runs
    as beam search leaves it (beam_histories, args.redraw). The same step each run: the cache does
    not advance."""
    if args.rows % args.beam:
        raise SystemExit(f"--rows {args.rows} is not a multiple of --beam {args.beam}")
    rng = np.random.default_rng(0)
    sentences = args.rows // args.beam
    ids = rng.integers(10, model.manifest.vocab_size, (sentences, args.source))
    mask = np.ones_like(ids)
    cross = model.encode(ids, mask).cross  # one copy per sentence
    cache = model.new_cache(sentences, args.past + 1, args.beam)
    cache.reorder(np.repeat(np.arange(sentences), args.beam))
    for buffer in cache.buffers:
        buffer[:, :, : args.past] = rng.standard_normal(buffer[:, :, : args.past].shape)
    cache.indirection[:, :, : args.past] = beam_histories(rng, sentences, args.beam, args.past, args.redraw)
    cache.length = args.past
    m = model.manifest
    last = np.full((args.rows, 1), 100)
    # a model with a shortlist decodes over the union of its sentences' (mtserve shortlist)
    tag = next(iter(model.languages.tag_ids.values()))
    vocab = model.output_vocab(ids.tolist(), [tag] * sentences)
    return step_feeds(m.decoder_layers, m.vocab_size, outputs, last, mask, cache, cross, vocab, model.host_top_k,
                      logits_eos=model.logits_eos)  # fmt: skip
