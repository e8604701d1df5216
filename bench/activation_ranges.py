"""How far other text takes the int8 activations past their calibrated ranges: `python
bench/activation_ranges.py --work W [--checkpoint artifacts/default] [--text en=FILE fr=FILE]
[--sentences 300]`.

A constant activation scale (`--activation-scales calibrated`) is the largest |x| that the
calibration text (the training config's first pairs, export/calibrate.py) gave each activation;
a value beyond it saturates at the end of the grid, where a scale per row never does. This
exports the checkpoint at int8 into W as `mtserve export --quantize int8` does and, beside the
calibration pass, runs the same pass over the other text (by default the first `--sentences` of
../shared/data/news/newstest2011 in each of the checkpoint's languages, out of the committed
model's domain). Per graph and activation: the product role that reads it
(bench/precision_sensitivity.py's groups),
its calibrated range, the other text's, and their ratio. A ratio above 1 is how far a constant
scale would saturate on such text.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.precision_sensitivity import GROUPS  # noqa: E402
from export import calibrate, writer  # noqa: E402
from model import corpus  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.data_config import open_text  # noqa: E402
from service.cli import main as mtserve  # noqa: E402

DEFAULT_TEXT = "news/newstest2011.{lang}.gz"


def first_lines(path: Path, count: int) -> list[str]:
    """The first `count` non-blank lines of a plain or gzip text file, stripped."""
    return list(itertools.islice((text for text in map(str.strip, open_text(path)) if text), count))


def roles(graph_path: Path) -> dict[str, str]:
    """Activation -> the group of the product that reads it."""
    graph = onnx.load(str(graph_path), load_external_data=False)
    found = {}
    for node in graph.graph.node:
        if node.op_type in ("MatMul", "Gemm"):  # the output projection is a Gemm until quantized
            for group, pattern in GROUPS.items():
                if re.search(pattern, node.input[1]):
                    found[node.input[0]] = group
    return found


def compare(checkpoint: Path, work: Path, other: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Each activation's calibrated range and the other text's, from one int8 export into `work`."""
    other_ids: dict[str, list[list[int]]] = {}
    rows: list[dict[str, Any]] = []

    def sources_too(model_dir: Path, texts: Mapping[str, Sequence[str]]) -> dict[str, list[list[int]]]:
        # while `model_dir` still holds the checked fp32 graphs
        other_ids.update(calibrate.calibration_sources(model_dir, other))
        return calibrate.calibration_sources(model_dir, texts)

    def observe_both(model_dir: Path, sources: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, calibrate.Observed]:
        calibrated = calibrate.observe_activations(model_dir, sources)
        seen = calibrate.observe_activations(model_dir, other_ids)
        for graph, observed in calibrated.items():
            role = roles(model_dir / graph)
            for name, value in observed.ranges.items():
                beyond = seen[graph].ranges.get(name, 0.0)
                ratio = beyond / value if value else 0.0
                rows.append({"graph": graph, "activation": name, "role": role.get(name, "-"),
                             "calibrated": value, "other": beyond, "ratio": ratio})  # fmt: skip
        return calibrated

    writer.calibration_sources = sources_too  # type: ignore[attr-defined]
    writer.observe_activations = observe_both  # type: ignore[attr-defined]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the export's report: it is in `work`
            code = mtserve(["export", "--checkpoint", str(checkpoint), "--out", str(work), "--quantize", "int8"])
    finally:
        writer.calibration_sources = calibrate.calibration_sources  # type: ignore[attr-defined]
        writer.observe_activations = calibrate.observe_activations  # type: ignore[attr-defined]
    if code != 0:
        raise SystemExit(f"export to {work} failed ({code})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="directory for the export")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--text", nargs="+", default=[], metavar="LANG=FILE", help="the other text, per language")
    parser.add_argument("--sentences", type=int, default=300, help="first N lines of each file")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    files = dict(item.split("=", 1) for item in args.text)
    if not files:  # the news text in each of the checkpoint's languages
        data_dir = corpus.resolve_data_dir(args.data_dir)
        languages = ModelConfig.load(args.checkpoint / "config.json").languages
        files = {lang: str(data_dir / DEFAULT_TEXT.format(lang=lang)) for lang in languages}
        missing = [path for path in files.values() if not Path(path).is_file()]
        if missing:
            raise SystemExit(f"no default text {', '.join(missing)}: give --text LANG=FILE for each language")
    other = {lang: first_lines(Path(path), args.sentences) for lang, path in files.items()}
    rows = compare(args.checkpoint, args.work, other)
    print("| graph | read by | activation | calibrated range | other text | ratio |")
    print("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["graph"], r["role"], r["activation"])):
        print(f"| {row['graph']} | {row['role']} | {row['activation']} | {row['calibrated']:.3f} | "
              f"{row['other']:.3f} | {row['ratio']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
