"""A random-weight Marian model of opus-mt-en-fr's shape, as a Hugging Face directory, for speed and memory.

    python bench/marian_shape.py --out runs/opus-mt-shape-en-fr
    mtserve import marian runs/opus-mt-shape-en-fr --out runs/opus-mt-shape-en-fr-mtserve
    python bench/engines.py --model runs/opus-mt-shape-en-fr-mtserve

d_model 512, 6+6 layers, 8 heads, feed-forward 2048, swish, shared and tied embeddings, a
vocabulary of 59,514 (opus-mt-en-fr's size): SentencePiece models trained on the Multi30k
training text, the rest of vocab.json unused entries. Weights are random but far from uniform,
so that engines agree token for token; the speed of a real model of this shape is the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.marian_models import Variant, build_marian_dir  # noqa: E402
from model import corpus  # noqa: E402

OPUS_MT_EN_FR = Variant(
    d_model=512,
    heads=8,
    ffn=2048,
    layers=6,
    spm_vocab=8000,
    vocab_size=59514,
    max_length=512,
    num_beams=4,
    max_positions=512,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    root = corpus.resolve_data_dir(args.data_dir) / "multi30k"
    en, fr = corpus.read_lines(root / "train.en.gz"), corpus.read_lines(root / "train.fr.gz")
    build_marian_dir(args.out, en, fr, OPUS_MT_EN_FR)
    print(args.out)


if __name__ == "__main__":
    main()
