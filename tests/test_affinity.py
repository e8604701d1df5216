"""Each process of a server of several held to its own share of the CPUs (MTSERVE_CPU_AFFINITY)."""

from __future__ import annotations

import os

import pytest

from service.api.affinity import hold_process, process_cpus


def _shares(processes: int, allowed: list[int]) -> list[list[int] | None]:
    return [None if (cpus := process_cpus(i, processes, allowed)) is None else sorted(cpus) for i in range(processes)]


def test_the_cpus_split_evenly_into_runs_without_overlap_or_gaps() -> None:
    assert _shares(2, [0, 1]) == [[0], [1]]
    assert _shares(2, [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert _shares(3, [0, 1, 2, 3, 4, 5, 6]) == [[0, 1, 2], [3, 4], [5, 6]]
    assert _shares(2, [2, 5, 7]) == [[2, 5], [7]]  # the CPUs allowed, not 0..n
    for processes in range(2, 9):
        for cpus in range(processes, 20):
            shares = _shares(processes, list(range(cpus)))
            assert sorted(c for share in shares if share for c in share) == list(range(cpus))
            sizes = [len(share) for share in shares if share is not None]
            assert len(sizes) == processes and max(sizes) - min(sizes) <= 1


def test_one_process_or_more_processes_than_cpus_is_left_to_the_kernel() -> None:
    assert _shares(1, [0, 1]) == [None]
    assert _shares(3, [0, 1]) == [None, None, None]


def test_an_index_outside_the_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="process 2 of 2"):
        process_cpus(2, 2, [0, 1])


def test_off_or_more_threads_than_the_share_holds_leave_the_process_where_it_was() -> None:
    before = os.sched_getaffinity(0)
    assert hold_process(0, 2, 1, "off") is None
    assert hold_process(0, 2, len(before), "auto") is None  # a share of half the CPUs is too few for the threads
    assert os.sched_getaffinity(0) == before
