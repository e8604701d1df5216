"""The target/source length distribution of human translations, in the model's tokens.

    python bench/length_ratio.py --config configs/finetune-news.toml --splits newstest2013 test2016
    python bench/length_ratio.py --splits test2016 val tatoeba-test

Tokenizes held-out pairs of ../shared/data with the served model's tokenizer, both directions,
and prints, per direction, the bounds T ≤ a·S + b and T ≥ c·S − d (S source tokens, T
reference tokens) that 99.9% of the pairs keep: what service/runtime/degenerate.py calls out
of proportion. The decoder's tags and EOS are not counted, except in `over_length_limit`: the
references longer than the runtime's proportional limit, 2·source + 10 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model import corpus  # noqa: E402
from model.train_config import load_config  # noqa: E402
from service.conventions import max_target_length  # noqa: E402
from service.manifest import load_manifest  # noqa: E402
from service.runtime.text_tokenizer import load_text_tokenizer  # noqa: E402

KEEP = 0.999


def bounds(source: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Slopes from the long pairs' ratios, offsets so that KEEP of all pairs lie inside."""
    long = source >= 10
    a = float(np.quantile(target[long] / source[long], KEEP))
    c = float(np.quantile(target[long] / source[long], 1 - KEEP))
    b = float(np.quantile(target - a * source, KEEP))
    d = float(np.quantile(c * source - target, KEEP))
    return {"a": round(a, 3), "b": round(max(b, 0.0), 1), "c": round(c, 3), "d": round(max(d, 0.0), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "artifacts" / "default"))
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--splits", nargs="+", default=["test2016", "val", "tatoeba-test"])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    model_dir = Path(args.model)
    tokenizer = load_text_tokenizer(model_dir, load_manifest(model_dir))
    cfg = load_config(Path(args.config), {}).data
    data_dir = corpus.resolve_data_dir(args.data_dir)
    report: dict[str, object] = {}
    for direction in (("en", "fr"), ("fr", "en")):
        source, target = [], []
        for split in args.splits:
            langs = cfg.split_langs(split)
            sources, references = corpus.split_texts(cfg, data_dir, split, direction if langs == direction else langs)
            if langs != direction:
                sources, references = references, sources
            source += [len(tokenizer.encode(s)) for s in sources]
            target += [len(tokenizer.encode(t)) for t in references]
        s, t = np.array(source, dtype=float), np.array(target, dtype=float)
        row = {"pairs": len(s), **bounds(s, t), "ratio_median": round(float(np.median(t[s > 0] / s[s > 0])), 3)}
        # references the runtime's proportional limit would cut (both counted with their EOS)
        row["over_length_limit"] = sum(int(b) + 1 > max_target_length(int(a) + 1) for a, b in zip(s, t, strict=True))
        report["-".join(direction)] = row
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
