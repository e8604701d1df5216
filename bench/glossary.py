"""Glossary report: how often an injected term's target appears, and what it costs in BLEU.

    python bench/glossary.py --limit 200

On the first N sentences of ../shared/data test2016 en→fr, each sentence gets one term: the
first word of the table below found in its English whose usual French the reference also
holds. Three runs of the served model's runtime, beam 5:
- no glossary;
- the natural glossary (the reference's own word, e.g. dog → chien);
- the natural glossary with placeholders on every sentence with a term (the runtime uses them
  only where the plain translation lacks the term);
- a forced glossary (a word the model would not choose, e.g. dog → toutou), where the term
  rate is the point and BLEU against references that say "chien" must drop.
The term rate counts outputs holding the term's target as whole words, exactly as given.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import sacrebleu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model import corpus  # noqa: E402
from service.runtime.beam import DecodeOptions  # noqa: E402
from service.runtime.glossary import Glossary, build_glossary  # noqa: E402
from service.runtime.translator import Translator  # noqa: E402

# English caption noun: (its usual French, a French word the model would not choose for it)
TERMS = {
    "man": ("homme", "monsieur"),
    "woman": ("femme", "dame"),
    "dog": ("chien", "toutou"),
    "boy": ("garçon", "gamin"),
    "girl": ("fille", "gamine"),
    "child": ("enfant", "bambin"),
    "people": ("personnes", "individus"),
    "men": ("hommes", "messieurs"),
    "women": ("femmes", "dames"),
    "street": ("rue", "chaussée"),
    "water": ("eau", "flotte"),
    "shirt": ("chemise", "liquette"),
    "car": ("voiture", "automobile"),
    "ball": ("balle", "baballe"),
    "bike": ("vélo", "bicyclette"),
    "group": ("groupe", "bande"),
    "hat": ("chapeau", "couvre-chef"),
    "beach": ("plage", "grève"),
    "snow": ("neige", "poudreuse"),
    "building": ("bâtiment", "édifice"),
}


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+(?:-\w+)*", text.lower()))


def injected(sources: list[str], references: list[str]) -> list[tuple[str, str, str] | None]:
    """Per sentence: (English term, natural target, forced target), or None when no term fits."""
    out: list[tuple[str, str, str] | None] = []
    for source, reference in zip(sources, references, strict=True):
        words, ref_words = _words(source), _words(reference)
        found = next(((e, n, f) for e, (n, f) in TERMS.items() if e in words and n in ref_words), None)
        out.append(found)
    return out


class _AlwaysPlaceholders(Glossary):
    """The runtime's placeholders on every sentence with a term, not only where the plain translation lacks it."""

    def missing(self, source: str, translation: str) -> bool:
        return self.regex is not None


def _always(glossary: Glossary) -> Glossary:
    return _AlwaysPlaceholders(glossary.entries, glossary.name)


def run(translator: Translator, sources: list[str], glossaries: list[Glossary | None]) -> tuple[list[str], float]:
    options = DecodeOptions(beam_size=5)
    t0 = time.perf_counter()
    out = [
        translator.translate([s], "fr", options, glossary=g)[0][0].text
        for s, g in zip(sources, glossaries, strict=True)
    ]
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "artifacts" / "default"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    root = corpus.resolve_data_dir(args.data_dir) / "multi30k"
    sources = corpus.read_lines(root / "test_2016_flickr.en.gz")[: args.limit]
    references = corpus.read_lines(root / "test_2016_flickr.fr.gz")[: args.limit]
    terms = injected(sources, references)
    translator = Translator.load(Path(args.model))
    report: dict[str, object] = {"sentences": len(sources), "with_a_term": sum(t is not None for t in terms)}
    runs: dict[str, list[Glossary | None]] = {
        "none": [None] * len(sources),
        "natural": [build_glossary([(t[0], t[1])]) if t else None for t in terms],
        "natural, placeholders always": [_always(build_glossary([(t[0], t[1])])) if t else None for t in terms],
        "forced": [build_glossary([(t[0], t[2])]) if t else None for t in terms],
    }
    for name, glossaries in runs.items():
        outputs, seconds = run(translator, sources, glossaries)
        bleu = sacrebleu.corpus_bleu(outputs, [references]).score
        row: dict[str, object] = {"bleu": round(bleu, 2), "seconds": round(seconds, 1)}
        for kind, index in (("natural", 1), ("forced", 2)):
            hits = sum(1 for out, t in zip(outputs, terms, strict=True) if t and t[index] in _words(out))
            row[f"{kind}_term_rate"] = round(hits / max(1, sum(t is not None for t in terms)), 3)
        report[name] = row
        print(name, row, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
