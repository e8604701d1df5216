"""Which CPUs each process of a server of several is held to (MTSERVE_CPU_AFFINITY).

A process's event loop hands each batch to its search thread and takes the answer back. Where
the kernel puts the two threads on different cores, a request wakes an idle core twice, and an
idle virtual core comes back slowly and with cold caches. Held to a core of its own, a process
keeps its threads on the core it keeps warm: on the 2-core machine of docs/BENCHMARKS.md one
sentence over HTTP took 0.15 to 0.6 ms less (bench/affinity.py), as many a second for 16 clients.
The processes split the CPUs evenly, so none competes with another for a core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence


def process_cpus(index: int, processes: int, allowed: Sequence[int]) -> frozenset[int] | None:
    """The CPUs that process `index` of `processes` is held to: `allowed` (ascending) split into
    `processes` runs of consecutive CPUs, as even as they go, the larger ones first. None where
    there are more processes than CPUs (some would share a core while another had one alone, which
    the kernel's own placement balances better) or only one process."""
    if processes < 2 or processes > len(allowed):
        return None
    if not 0 <= index < processes:
        raise ValueError(f"process {index} of {processes}")
    size, larger = divmod(len(allowed), processes)
    start = index * size + min(index, larger)
    return frozenset(allowed[start : start + size + (index < larger)])


def hold_process(index: int, processes: int, threads: int, setting: str) -> frozenset[int] | None:
    """Holds this process (its threads, and every thread it starts after) to its share of the CPUs it may use;
    returns them, or None where it is left to the kernel: the setting is off, or the share has
    fewer CPUs than the process's onnxruntime `threads`, which would then take turns on them."""
    if setting != "auto":
        return None
    cpus = process_cpus(index, processes, sorted(os.sched_getaffinity(0)))
    if cpus is None or len(cpus) < threads:
        return None
    for thread in os.listdir("/proc/self/task"):  # those started already too: numpy's BLAS pool starts at import
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread), cpus)
    return cpus
