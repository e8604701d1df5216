"""Engines timed side by side, each in a worker process of its own (the latency issue's method).

The parent writes the job, every sentence's source ids and the batches, into a work directory
(`write_job`) and starts one worker per engine configuration (`started`), whose process calls
`serve` with that engine's decoder. A worker decodes the job's first batch once and then the whole
job as many times as the job's warm-up asks, says it is ready, then for every line on its stdin
decodes every batch and writes back the seconds that took (timed in the worker, not the pipe) and
each sentence's output ids. The warm-up brings each engine to the speed a server that has run a
while has: CTranslate2 decoded the 1,000 test2016 sentences 5 to 13% faster after its first pass
than in it (docs/BENCHMARKS.md). The parent runs one worker at a time,
round after round (`interleaved_rounds`): each engine has the machine to itself while it decodes,
and no other engine's threads or memory share its process.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from bench.common import DecodeAll

K = TypeVar("K")
Outputs = list[list[int]]  # each sentence's output ids, in the job's order
Ran = tuple[float, Outputs]  # a worker's seconds and outputs in one round

JOB_FILE = "job.json"
# After a worker's round, before the next one's: a thread pool's threads spin for a while after a call.
PAUSE_S = 0.05


def write_job(
    work: Path, sources: Sequence[Sequence[int]], groups: Sequence[Sequence[int]], warmup_passes: int = 0
) -> None:
    """The sentences' source ids and the batches (indices into them) that every worker decodes, and
    how many times each decodes them all before it says it is ready."""
    if warmup_passes < 0:
        raise ValueError(f"warmup_passes must be 0 or more, got {warmup_passes}")
    (work / JOB_FILE).write_text(json.dumps({"sources": sources, "groups": groups, "warmup_passes": warmup_passes}))


def serve(work: Path, decode_all: DecodeAll) -> None:
    """A worker's side: the job's first batch through `decode_all`, then all its batches as many times
    as its warm-up asks; then all of them once for each line on stdin, each time the seconds and
    every sentence's output ids (in job order) on stdout."""
    job = json.loads((work / JOB_FILE).read_text())
    sources: list[list[int]] = job["sources"]
    groups: list[list[int]] = job["groups"]
    batches = [[sources[i] for i in group] for group in groups]
    decode_all(batches[:1])
    for _ in range(job["warmup_passes"]):
        decode_all(batches)
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        decoded = decode_all(batches)
        seconds = time.perf_counter() - started
        outputs: Outputs = [[] for _ in sources]
        for group, batch_out in zip(groups, decoded, strict=True):
            for i, tokens in zip(group, batch_out, strict=True):
                outputs[i] = tokens
        print(json.dumps({"seconds": seconds, "outputs": outputs}), flush=True)


class EngineWorker:
    """One engine configuration in a process of its own: `command` runs `serve` for it."""

    def __init__(self, command: list[str], name: str) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.name = name

    def wait_ready(self) -> None:
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {self.name} worker failed to start (exit {self.process.wait()})")

    def decode_all(self) -> tuple[float, Outputs]:
        """Seconds the worker took to decode every batch, and each sentence's output ids."""
        self.stdin.write("run\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped (exit {self.process.wait()})")
        record = json.loads(line)
        return float(record["seconds"]), record["outputs"]

    def close(self) -> None:
        self.stdin.close()
        self.process.wait()


@contextlib.contextmanager
def started(commands: Mapping[K, list[str]]) -> Iterator[dict[K, EngineWorker]]:
    """A worker per command, all loaded before the first round; closed on the way out."""
    workers: dict[K, EngineWorker] = {}
    try:
        for key, command in commands.items():
            workers[key] = EngineWorker(command, str(key))
        for worker in workers.values():
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


def interleaved_rounds(workers: Mapping[K, EngineWorker], rounds: int) -> Iterator[tuple[int, dict[K, Ran]]]:
    """Each round's index and every worker's seconds and outputs, in the order they ran, `rounds`
    times over."""
    for round_index in range(rounds):
        ran: dict[K, Ran] = {}
        for key, worker in workers.items():
            ran[key] = worker.decode_all()
            time.sleep(PAUSE_S)
        yield round_index, ran


def agreements(ran: Mapping[tuple[str, str], Ran], precisions: Sequence[str]) -> Iterator[tuple[str, int]]:
    """(precision, sentences both decoded to the same tokens) for each precision at which this runtime
    ("mtserve-onnx") and CTranslate2 both ran in a round."""
    for precision in precisions:
        ours, theirs = ran.get(("mtserve-onnx", precision)), ran.get(("ctranslate2", precision))
        if ours is not None and theirs is not None:
            yield precision, sum(a == b for a, b in zip(ours[1], theirs[1], strict=True))
