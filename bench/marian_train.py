"""Train a small Marian model with transformers on Multi30k en→fr, then score it two ways.

    python bench/marian_train.py --out runs/marian-small --minutes 10
    python bench/marian_train.py --out runs/marian-small --score-only

The trained directory is a Hugging Face Marian model (config, safetensors, source/target.spm,
vocab.json, generation_config.json), an input for `mtserve import marian` and bench/engines.py.
It is never committed. Scoring imports it and translates ../shared/data test2016 with mtserve's
runtime and with transformers' own `generate`, under the same rules (beam, length penalty,
maximum length, transformers' early stopping and forced EOS), and prints both BLEU scores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.marian_models import Variant, new_marian, save_marian_dir  # noqa: E402
from export.marian import hf_tokenizer  # noqa: E402
from model import corpus  # noqa: E402
from model.evaluate import score_translations  # noqa: E402

VARIANT = Variant(
    d_model=256, heads=4, ffn=1024, layers=3, spm_vocab=8000, init="hf", max_length=128, num_beams=5, seed=11
)


def _pairs(data_dir: str | None) -> tuple[list[str], list[str]]:
    root = corpus.resolve_data_dir(data_dir) / "multi30k"
    return corpus.read_lines(root / "train.en.gz"), corpus.read_lines(root / "train.fr.gz")


def _batches(src: list[list[int]], tgt: list[list[int]], max_tokens: int, seed: int) -> list[list[int]]:
    order = sorted(range(len(src)), key=lambda i: (len(src[i]), random.Random(seed + i).random()))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest = max(longest, len(src[i]), len(tgt[i]))
        if current and longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], max(len(src[i]), len(tgt[i]))
        current.append(i)
    batches.append(current)
    random.Random(seed).shuffle(batches)
    return batches


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def train(out: Path, minutes: float, data_dir: str | None, threads: int) -> None:
    torch.set_num_threads(threads)
    en, fr = _pairs(data_dir)
    model = new_marian(out, en, fr, VARIANT)
    pad = int(model.config.pad_token_id)
    tok, target_tok = hf_tokenizer(out, "source"), hf_tokenizer(out, "target")
    eos = tok.ids["</s>"]
    src = [[*tok.encode(s), eos] for s in en]
    tgt = [[*target_tok.encode(s), eos] for s in fr]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, math.sqrt(warmup / (s + 1)))
    )
    model.train()
    start, step, epoch, tokens = time.monotonic(), 0, 0, 0
    while time.monotonic() - start < minutes * 60:
        for batch in _batches(src, tgt, 3000, epoch):
            labels = _pad([tgt[i] for i in batch], -100)
            ids = _pad([src[i] for i in batch], pad)
            loss = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            tokens += int((labels != -100).sum())
            elapsed = time.monotonic() - start
            if step % 50 == 0:
                print(f"step {step} epoch {epoch} loss {loss.item():.3f} {tokens / elapsed:.0f} tgt tok/s "
                      f"{elapsed / 60:.1f}/{minutes:.0f} min", flush=True)  # fmt: skip
            if elapsed > minutes * 60:
                break
        epoch += 1
    model.eval()
    save_marian_dir(model, out, VARIANT)
    print(json.dumps({"steps": step, "epochs": epoch, "minutes": round((time.monotonic() - start) / 60, 1)}))


def score(out: Path, data_dir: str | None, beam: int, limit: int) -> None:
    from transformers import MarianMTModel, MarianTokenizer

    from export.marian import import_marian
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator

    root = corpus.resolve_data_dir(data_dir) / "multi30k"
    sources = corpus.read_lines(root / "test_2016_flickr.en.gz")[: limit or None]
    references = corpus.read_lines(root / "test_2016_flickr.fr.gz")[: limit or None]
    imported = Path(tempfile.mkdtemp(prefix="marian-import-"))
    import_marian(out, imported)
    translator = Translator.load(imported, 2)
    gen = translator.model.manifest.generation
    rules = {"proportional_limit": False, "max_length": gen.max_length, "early_stopping": gen.early_stopping,
             "forced_eos": gen.forced_eos, "repetition_guard": False, "cut_degenerate": False}  # fmt: skip
    options = DecodeOptions(beam_size=beam, length_penalty=gen.length_penalty, **rules)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    ours = [t[0].text for t in translator.translate(sources, "fr", options)]
    ours_s = time.perf_counter() - t0
    model = MarianMTModel.from_pretrained(str(out)).eval()  # type: ignore[no-untyped-call]
    tokenizer = MarianTokenizer.from_pretrained(str(out))
    theirs: list[str] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(sources), 32):
            batch = tokenizer(sources[i : i + 32], return_tensors="pt", padding=True)
            generated = model.generate(**batch, num_beams=beam, max_length=gen.max_length + 1)
            theirs += tokenizer.batch_decode(generated, skip_special_tokens=True)
    theirs_s = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(json.dumps({
        "sentences": len(sources), "beam": beam,
        "mtserve_bleu": score_translations(ours, references, ours_s).bleu,
        "transformers_bleu": score_translations(theirs, references, theirs_s).bleu,
        "identical_outputs": same, "mtserve_seconds": round(ours_s, 1), "transformers_seconds": round(theirs_s, 1),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="first N test2016 sentences (default: all 1000)")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    if not args.score_only:
        train(args.out, args.minutes, args.data_dir, args.threads)
    score(args.out, args.data_dir, args.beam_size, args.limit)


if __name__ == "__main__":
    main()
