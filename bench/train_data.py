"""Training's memory and speed against the size of its corpora.

    python bench/train_data.py --minutes 3                      # configs/default.toml as it is
    python bench/train_data.py --minutes 3 --scale 20           # every corpus 20 times larger
    python bench/train_data.py --minutes 3 --code OTHER_CHECKOUT --config OTHER_CHECKOUT/configs/default.toml

Each run is a fresh run directory: `mtserve data prepare` in one child process, then `mtserve
train` (which reuses the shards) in another; with `--code`, an earlier trainer that has no
prepare command, one `train`. It prints one JSON line: each child's peak resident memory
(getrusage of that child), the median training tokens/s over the log rows after the first
(which holds torch.compile's warm-up), the steps and the preparation time. `--scale N` writes N distinct copies of every
corpus and monolingual file (each copy's lines end in a mark of their own, so deduplication
keeps them all) and a config that points at them. `--code DIR` runs another checkout's
trainer on the same data: how an earlier version is measured side by side.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.corpus import resolve_data_dir  # noqa: E402
from model.data_config import expand, open_text, resolve  # noqa: E402
from model.train_config import load_config  # noqa: E402


def _mark(k: int) -> str:
    """Copy k's mark: lower-case letters, so copy augmentation (which copies numbers and names)
    treats the copies as it treats the originals."""
    letters = ""
    while True:
        letters = chr(ord("a") + k % 26) + letters
        k //= 26
        if not k:
            return "x" + letters


def _copies(lines: list[str], scale: int, tsv: bool) -> list[str]:
    if scale == 1:
        return lines
    out = []
    for k in range(scale):
        mark = _mark(k)
        for line in lines:
            if tsv:
                cols = line.split("\t")
                out.append("\t".join([f"{cols[0]} {mark}", f"{cols[1]} {mark}", *cols[2:]]) if len(cols) >= 2 else line)
            else:
                out.append(f"{line} {mark}" if line else line)
    return out


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as handle:
        handle.writelines(line + "\n" for line in lines)


def scaled_config(config: Path, data_dir: Path, scale: int, work: Path) -> Path:
    """A copy of `config` whose corpora and monolingual files are `scale` times larger (held-out
    splits unchanged), written under `work`."""
    text = config.read_text()
    values = tomllib.loads(text)
    for entry in values.get("corpora", []):
        for key in ("source", "target", "tsv"):
            if key in entry:
                target = work / "data" / f"{entry['name']}.{key}.gz"
                lines = list(open_text(resolve(entry[key], data_dir)))
                _write(target, _copies(lines, scale, key == "tsv"))
                text = text.replace(f'"{entry[key]}"', f'"{target}"')
    for mono in values.get("monolingual", []):
        for pattern in mono["files"]:
            for path in expand(pattern, data_dir):
                _write(work / "data" / "mono" / path.name, _copies(list(open_text(path)), scale, False))
            text = text.replace(f'"{pattern}"', f'"{work / "data" / "mono" / Path(pattern).name}"')
    out = work / f"scaled-{scale}.toml"
    out.write_text(text)
    return out


def _child(cmd: list[str], code: Path) -> float:
    """Run one command from `code`; its peak resident memory in MB."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd[:5])} failed:\n{log.read().decode()[-2000:]}")
    return round(usage.ru_maxrss / 1024, 1)


def run(
    code: Path, config: Path, data_dir: Path, minutes: float, out_dir: Path, extra: list[str], prepare: bool
) -> dict[str, object]:
    common = ["--config", str(config), "--data-dir", str(data_dir), "--out-dir", str(out_dir), *extra]
    started = time.monotonic()
    prepare_rss = _child([sys.executable, "-m", "service.cli", "data", "prepare", *common], code) if prepare else None
    train_rss = _child([sys.executable, "-m", "service.cli", "train", *common, "--max-minutes", str(minutes),
                        "--checkpoint-minutes", "1000", "--log-every", "10"], code)  # fmt: skip
    wall = time.monotonic() - started
    with open(out_dir / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    speeds = [float(r["tokens_per_s"]) for r in rows[1:]] or [float(rows[0]["tokens_per_s"])]
    prepared = out_dir / "data" / "prepared.json"
    return {
        "code": str(code),
        "config": str(config),
        "prepare_peak_rss_mb": prepare_rss,
        "train_peak_rss_mb": train_rss,
        "median_tokens_per_s": round(statistics.median(speeds)),
        "log_rows": len(speeds),
        "steps": int(rows[-1]["step"]),
        "train_minutes": float(rows[-1]["minutes"]),
        "wall_minutes": round(wall / 60, 2),
        "prepare_seconds": json.loads(prepared.read_text())["seconds"] if prepared.is_file() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose trainer runs (default: this one)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes (--max-minutes)")
    parser.add_argument("--scale", type=int, default=1, help="copies of every corpus")
    parser.add_argument("--data-dir")
    parser.add_argument("train_flags", nargs="*", help="further `mtserve train` flags, after --")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir).resolve()
    if args.code.resolve() == ROOT:
        load_config(args.config, {})  # a bad config fails here, not in a child
    with tempfile.TemporaryDirectory(prefix="mtserve-train-data-") as tmp:
        work = Path(tmp)
        config = scaled_config(args.config, data_dir, args.scale, work) if args.scale > 1 else args.config.resolve()
        this = args.code.resolve() == ROOT
        result = run(args.code.resolve(), config, data_dir, args.minutes, work / "run", args.train_flags, this)
    print(json.dumps({"scale": args.scale, **result}))


if __name__ == "__main__":
    main()
