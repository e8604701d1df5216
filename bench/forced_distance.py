"""How far each model's step sits from the first model's, on the references: `python
bench/forced_distance.py --model FP32 artifacts/default [DIR ...] [--split val] [--sentences 400]`.

Each source is encoded and its reference fed to the decoder token by token (teacher forcing), so
every model scores the same prefixes and no search decision amplifies a difference. Per model and
direction, printed as one JSON object each: the mean absolute difference of the reference tokens'
log-probabilities from the first model's (`mean_abs_log_prob_diff`), the share of steps whose
most likely token is the first model's (`same_top_token`), and the mean negative log-probability
of the references (`nll`). BLEU moves with which sentences a beam search happens to flip
(bench/precision_bleu.py); this moves only with the graphs' arithmetic, so it is what a change in
quantization is judged by. Every direction of the first model's manifest; the split defaults to
`val`, where choices are made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_data, runtime_parser  # noqa: E402
from model import corpus  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402
from service.textnorm import normalize  # noqa: E402


def forced_steps(translator: Translator, source: str, reference: str, tag: int) -> tuple[np.ndarray, np.ndarray]:
    """Per reference token (EOS last): its log-probability, and the step's most likely token."""
    model = translator.model
    ids = np.asarray([translator.prepare(source).pieces[0]], dtype=np.int64)
    target = [*translator.tokenizer.encode(normalize(reference)), model.eos_id]
    mask = np.ones_like(ids)
    cross = model.encode(ids, mask).cross
    cache = model.new_cache(1, len(target))
    last, log_probs, top = tag, [], []
    for token in target:
        step = model.decode_step(np.asarray([[last]], dtype=np.int64), mask, cache, cross)[0]
        log_probs.append(step[token])
        top.append(int(step.argmax()))
        last = token
    return np.asarray(log_probs), np.asarray(top)


def main() -> None:
    parser = runtime_parser(__doc__, 400)
    parser.add_argument("--split", default="val", help="held-out split of the benchmark config")
    args = parser.parse_args()
    data, data_dir = bench_data(), corpus.resolve_data_dir(args.data_dir)
    translators = [Translator.load(model_dir, args.threads) for model_dir in args.model]
    first = translators[0]
    for source_language, target_language in first.languages.directions:
        sources, references = corpus.split_texts(data, data_dir, args.split, (source_language, target_language))
        pairs = [(s, r) for s, r in zip(sources, references, strict=True) if first.prepare(s).pieces][: args.sentences]
        tag = first.languages.tag_ids[target_language]
        baseline: tuple[np.ndarray, np.ndarray] | None = None
        for model_dir, translator in zip(args.model, translators, strict=True):
            steps = [forced_steps(translator, s, r, tag) for s, r in pairs]
            log_probs = np.concatenate([lp for lp, _ in steps])
            top = np.concatenate([t for _, t in steps])
            baseline = baseline or (log_probs, top)
            row = {
                "model": str(model_dir), "precision": translator.model.manifest.precision, "split": args.split,
                "direction": f"{source_language}-{target_language}", "sentences": len(pairs), "tokens": len(top),
                "mean_abs_log_prob_diff": round(float(np.abs(log_probs - baseline[0]).mean()), 5),
                "same_top_token": round(float((top == baseline[1]).mean()), 4),
                "nll": round(float(-log_probs.mean()), 4),
            }  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
