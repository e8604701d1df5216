"""Does a sentence translate the same alone as in a batch? `python bench/batch_invariance.py [--model DIR ...]`.

Translates the first N test2016 English sentences in one batch, then each alone (beam 5),
and prints one JSON object: sentences, translations that differ, the largest score difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RuntimeBench  # noqa: E402


def main() -> None:
    bench = RuntimeBench.from_command_line(__doc__, 100)
    sources, options = bench.sources, bench.options
    for model_dir, translator in bench.translators():
        batched = [t[0] for t in translator.translate(sources, "fr", options)]
        alone = [translator.translate([s], "fr", options)[0][0] for s in sources]
        row = {
            "model": model_dir.name,
            "precision": translator.model.manifest.precision,
            "sentences": len(sources),
            "different_translations": sum(a.text != b.text for a, b in zip(alone, batched, strict=True)),
            "max_score_diff": max(abs(a.score - b.score) for a, b in zip(alone, batched, strict=True)),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
