"""Where decoding spends its time outside onnxruntime: `python bench/host_time.py [--model DIR] [--beam-size 5]`.

Translates the first --sentences of test2016 under cProfile (after a warm-up batch) and prints
the total seconds, the seconds inside onnxruntime's runs, what is left (the host's work: beam
bookkeeping, cache moves, tokenization), and the functions of this project that take the most
of it, with their cumulative seconds.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RuntimeBench, bench_target  # noqa: E402

SHOWN = 8


def main() -> None:
    bench = RuntimeBench.from_command_line(__doc__, 1000)
    target = bench_target()
    for model_dir, translator in bench.translators():
        translator.translate(bench.sources[:50], target, bench.options)  # warm up
        profile = cProfile.Profile()
        profile.enable()
        translator.translate(bench.sources, target, bench.options)
        profile.disable()
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        runs = [f for f in stats if f[2].startswith("<built-in method onnxruntime") and "run" in f[2]]
        total = sum(entry[2] for entry in stats.values())
        in_onnxruntime = sum(stats[f][2] for f in runs)
        # Functions that reach an onnxruntime run: their cumulative time is not the host's.
        reaching, todo = set(runs), list(runs)
        while todo:
            for caller in stats[todo.pop()][4]:
                if caller not in reaching:
                    reaching.add(caller)
                    todo.append(caller)
        ours = {
            f"{Path(path).relative_to(ROOT)}:{line}({name})": stats[(path, line, name)][3]
            for path, line, name in stats
            if path.startswith(str(ROOT / "service")) and (path, line, name) not in reaching
        }
        print(
            f"{model_dir.name}, beam {bench.args.beam_size}, {len(bench.sources)} sentences: total {total:.2f} s, "
            f"onnxruntime {in_onnxruntime:.2f} s, host {total - in_onnxruntime:.2f} s"
        )
        for where, seconds in sorted(ours.items(), key=lambda item: -item[1])[:SHOWN]:
            print(f"  {seconds:6.3f} s  {where}")


if __name__ == "__main__":
    main()
