"""Service settings: MTSERVE_* variables, and threads from the container's CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ByteSize

from service.api.settings import Settings, cpu_quota


def test_every_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTSERVE_QUEUE_SIZE", "32")
    monkeypatch.setenv("MTSERVE_API_KEYS", "k-7Qz9secret, k-2Wx4secret")
    monkeypatch.setenv("MTSERVE_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("MTSERVE_REQUIRE_API_KEY", "true")
    settings = Settings()
    assert settings.queue_size == 32 and settings.require_api_key
    assert [k.get_secret_value() for k in settings.api_keys] == ["k-7Qz9secret", "k-2Wx4secret"]
    # keys no checkout path could contain: the model path is in the repr too
    assert all(key not in repr(settings) for key in ("k-7Qz9secret", "k-2Wx4secret"))
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTSERVE_QUEUE_SIZE", "0")
    with pytest.raises(ValueError, match="queue_size"):
        Settings()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, 1.5 CPUs rounds to 2
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ],
)
def test_threads_follow_the_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], expected: int) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == min(expected, cpu_quota(tmp_path / "none"))


def test_no_quota_means_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) >= 1
    assert Settings(threads=3).intra_op_threads == 3


def test_a_process_takes_an_even_share_of_the_service_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.api.settings.cpu_quota", lambda: 4)
    budget = ByteSize(3 << 30)
    whole = Settings(processes=2, queue_size=257, max_connections=1024, memory_budget=budget, batch_tokens=2048)
    share = whole.process_share()
    assert (share.intra_op_threads, share.batch_workers) == (2, 2)
    assert (share.queue_size, share.max_connections, share.batch_tokens) == (129, 512, 1024)
    assert share.memory_budget == 3 * 2**30 // 2 and share.processes == 2
    assert share.files_per_process == 64  # of the 128 translated files the service keeps
    # threads and workers set by hand are each process's own
    assert Settings(processes=2, threads=1, workers=3).process_share().batch_workers == 3
    assert Settings(processes=2, threads=1, workers=3).process_share().intra_op_threads == 1
    one = Settings()
    assert one.process_share() is one


def test_processes_zero_means_one_per_core_of_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.api.settings.cpu_quota", lambda: 4)
    share = Settings(processes=0).process_share()
    assert share.processes == 4 and (share.intra_op_threads, share.batch_workers) == (1, 1)
    monkeypatch.setattr("service.api.settings.cpu_quota", lambda: 1)
    assert Settings(processes=0).processes == 1  # one core: the server of one process
