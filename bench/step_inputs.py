"""A decoder step's inputs as a beam search leaves them, from random ids: for the benchmarks that
run the step graph alone (bench/profile_step.py, bench/step_time.py)."""

from __future__ import annotations

import argparse

import numpy as np

from service.runtime.sessions import OnnxModel, StepFeeds, step_feeds


def add_shape_options(parser: argparse.ArgumentParser, rows: int) -> None:
    """--rows (default `rows`), --beam, --past and --source."""
    parser.add_argument("--rows", type=int, default=rows, help="decoder rows: sentences x beam")
    parser.add_argument("--beam", type=int, default=5, help="rows per sentence, which share its cross K/V")
    parser.add_argument("--past", type=int, default=20, help="tokens already generated")
    parser.add_argument("--source", type=int, default=20, help="source tokens")


def random_step(model: OnnxModel, args: argparse.Namespace, outputs: list[str]) -> StepFeeds:
    """Feeds for one step of args.rows rows (args.beam per sentence) after args.past steps over
    sources of args.source tokens: beams with their own histories, the cache's indirection random.
    The same step each run: the cache does not advance."""
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
    cache.indirection[:, :, : args.past] = rng.integers(0, args.beam, (sentences, args.beam, args.past))
    cache.length = args.past
    m = model.manifest
    last = np.full((args.rows, 1), 100)
    # a model with a shortlist decodes over the union of its sentences' (mtserve shortlist)
    tag = next(iter(model.languages.tag_ids.values()))
    vocab = model.output_vocab(ids.tolist(), [tag] * sentences)
    return step_feeds(m.decoder_layers, m.vocab_size, outputs, last, mask, cache, cross, vocab)
