"""Degenerate outputs on held-out news, before and after ranking degenerate hypotheses last.

    python bench/degenerate.py --limit 500

Translates the first N sentences of ../shared/data news/newstest2013 in both directions with
the served model's runtime (beam 5) twice: "before" keeps the beam's own order (the repetition
guard alone), "after" is the runtime as served (service/runtime/degenerate.py). An output is
degenerate when it was cut at the length limit, is out of proportion to its source, or loops,
by the rules of service/runtime/degenerate.py applied to the output's tokens. Prints counts,
how many came back with quality "low", how many degenerate ones did not, the longest output
and BLEU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import sacrebleu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model import corpus  # noqa: E402
from service.runtime import beam  # noqa: E402
from service.runtime.beam import DecodeOptions, Hypothesis  # noqa: E402
from service.runtime.degenerate import looping, out_of_proportion  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402


def _beam_order(hyps: Sequence[Hypothesis], source: Sequence[int], n_best: int) -> list[Hypothesis]:
    return sorted(hyps, key=lambda h: -h.score)[:n_best]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "artifacts" / "default"))
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    news = corpus.resolve_data_dir(args.data_dir) / "news"
    translator = Translator.load(Path(args.model))
    options = DecodeOptions(beam_size=5)
    report: dict[str, object] = {}
    for source_lang, target_lang in (("en", "fr"), ("fr", "en")):
        sources = corpus.read_lines(news / f"newstest2013.{source_lang}.gz")[: args.limit]
        references = corpus.read_lines(news / f"newstest2013.{target_lang}.gz")[: args.limit]
        for mode in ("before", "after"):
            t0 = time.perf_counter()
            if mode == "before":
                with mock.patch.object(beam, "sane_first", _beam_order):
                    results = translator.translate(sources, target_lang, options)
            else:
                results = translator.translate(sources, target_lang, options)
            seconds = time.perf_counter() - t0
            outputs = [r[0] for r in results]
            degenerate = unflagged = 0
            for source, out in zip(sources, outputs, strict=True):
                src = translator.tokenizer.encode(source)
                tgt = translator.tokenizer.encode(out.text)
                at_limit = out.target_tokens >= options.limit(len(src) + 1)
                bad = at_limit or out_of_proportion(len(tgt), len(src)) or looping(tgt, src)
                degenerate += bad
                unflagged += bad and out.quality != "low"
            row = {
                "sentences": len(sources),
                "degenerate": degenerate,
                "degenerate_not_flagged_low": unflagged,
                "quality_low": sum(o.quality == "low" for o in outputs),
                "longest_output_tokens": max(o.target_tokens for o in outputs),
                "bleu": round(sacrebleu.corpus_bleu([o.text for o in outputs], [references]).score, 2),
                "seconds": round(seconds, 1),
            }
            report[f"{source_lang}-{target_lang} {mode}"] = row
            print(source_lang, target_lang, mode, row, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
