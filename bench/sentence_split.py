"""Sentence splitting of long lines: `python bench/sentence_split.py [--lengths 5000 20000 100000] [--rounds 3]`.

Joins the test2016 source sentences (the benchmark split, as the other benchmarks read it) into
one line of each length, and times pysbd given the whole line against the service's
`split_sentences` (service/runtime/sentences.py: a window at a time, lines without letters
skipped). Prints, per length, the median milliseconds of each over the rounds, the sentences
each found, and whether their sentences are the same.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import pysbd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_ms, test_pairs
from service.runtime.sentences import split_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[5000, 20000, 100000], help="characters a line")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="the shared data (default: MTSERVE_DATA_DIR)")
    args = parser.parse_args()
    sources, _ = test_pairs(args.data_dir)
    text = " ".join(sources)
    while len(text) < max(args.lengths):
        text += " " + text
    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
    for length in args.lengths:
        line = text[:length].strip()
        whole = [line[s.start : s.end].strip() for s in segmenter.segment(line)]
        split = split_sentences(line, "en").sentences
        print(json.dumps({
            "characters": len(line),
            "pysbd_whole_line_ms": round(median_ms(functools.partial(segmenter.segment, line), args.rounds), 1),
            "split_sentences_ms": round(median_ms(functools.partial(split_sentences, line, "en"), args.rounds), 1),
            "sentences": [len(whole), len(split)],
            "same_sentences": whole == split,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
