"""Every service setting, read from MTSERVE_* environment variables (pydantic-settings)."""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.api.files import MAX_STORED_FILES
from service.manifest import DEFAULT_MODEL_DIR, MANIFEST_FILE
from service.runtime.packed import packed_dir


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the cgroup quota (cgroup v2 or v1) if set, else the affinity mask."""
    available = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, min(available, int(float(quota) / float(period) + 0.5)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return max(1, min(available, round(quota_us / period_us)))
    except (OSError, ValueError):
        pass
    return available


def _model_dirs_in(path: Path) -> list[Path]:
    """A model directory itself; the model directories in a directory of them (none in an empty
    one: a models volume nothing was imported into yet)."""
    if (path / MANIFEST_FILE).is_file() or not path.is_dir():
        return [path]  # a model directory, or a path start-up reports as missing
    inside = sorted(p for p in path.iterdir() if (p / MANIFEST_FILE).is_file())
    if inside or not any(path.iterdir()):
        return inside
    return [path]  # files but no model directory: start-up names its missing manifest


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MTSERVE_", extra="ignore")

    # model and runtime
    model_dir: Path = DEFAULT_MODEL_DIR
    models: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="model directories to serve together (comma-separated), or directories of them; empty: model_dir",
    )
    prefer: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="model names that win a direction two models serve, first wins"
    )
    memory_budget: ByteSize | None = Field(
        default=None,
        description="models load on their first request, least recently used idle ones unloaded to stay within "
        "this (e.g. 3GiB); unset: every model loads at start",
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="model names loaded at start and kept, with a memory budget"
    )
    pivot: str = Field(
        default="en",
        description="where no model serves a direction, translate through a chain of served ones, preferring "
        "this language among chains of one length; off: only the models' own directions",
    )
    model_name: str = Field(
        default="", description="name in /ready, /v1/translate and metrics; empty: mtserve-<languages>"
    )
    packed_dir: str = Field(
        default="",
        description="where each graph's pre-packed weights are kept, made at its first load on this CPU and "
        "mapped by every session (one copy of the weights); empty: mtserve/packed in the user's cache "
        "directory; off: none, each session packs its own",
    )
    low_memory: bool = Field(
        default=False,
        description="without packed copies: large batches read weights from the mapped file instead of a second "
        "packed copy, about half a large model's memory for a few percent of large-batch throughput",
    )
    threads: int = Field(default=0, ge=0, description="onnxruntime intra-op threads; 0: the container's CPU quota")
    batch_tokens: int = Field(
        default=2048, ge=64, description="token budget of the model batches running at once, shared between the workers"
    )
    max_wait_ms: float = Field(
        default=5.0,
        ge=0,
        description="longest a batch waits to fill while the runtime is busy, or under a steady load for the "
        "clients just answered to come back",
    )
    workers: int = Field(
        default=0, ge=0, le=8, description="model batches that may run at once; 0: one per core of the CPU quota"
    )
    processes: int = Field(
        default=1,
        ge=0,
        le=64,
        description="server processes sharing the port, each with its own interpreter, models, queue and batch "
        "workers; the queue, connections, batch budget, memory budget and file bound are split evenly between "
        "them, and so is the CPU quota where threads and workers are unset; 0: one per core of the CPU quota "
        "(docs/DEPLOY.md, Processes)",
    )
    cpu_affinity: Literal["auto", "off"] = Field(
        default="auto",
        description="with several processes, auto holds each to its own even share of the CPUs the server may use, "
        "so that its event loop, search and onnxruntime threads stay on cores it keeps warm; off: the kernel places "
        "them (docs/DEPLOY.md, Processes)",
    )
    repetition_guard: Literal["model", "on", "off"] = Field(
        default="model",
        description="the repetition guard and the cut of degenerate output for every model; model: each model's own",
    )
    default_beam_size: int = Field(
        default=0, ge=0, le=8, description="beam of requests that name none; 0: each model's own (mtserve: 5)"
    )
    # flow control
    queue_size: int = Field(default=256, ge=1, description="sentences waiting for the model, after splitting")
    request_timeout_s: float = Field(default=30.0, gt=0)
    drain_s: float = Field(default=25.0, ge=0, description="on SIGTERM, time allowed to finish accepted work")
    retry_after_s: int = Field(default=1, ge=1)
    # connections (docs/DEPLOY.md: keep idle connections longer than any load balancer in front)
    keepalive_s: int = Field(default=75, ge=1, description="an idle keep-alive connection is closed after this long")
    header_timeout_s: float = Field(
        default=20.0, gt=0, description="time a connection has to send a request's headers, from its first byte or open"
    )
    max_connections: int = Field(
        default=1024, ge=1, description="open connections; a request on one beyond them gets 503 with Retry-After"
    )
    # LibreTranslate-style limits (-1: none)
    char_limit: int = Field(default=5000, ge=-1)
    batch_limit: int = Field(default=64, ge=-1)
    alternatives_limit: int = Field(default=3, ge=0)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    req_limit: int = Field(default=0, ge=0, description="requests per minute per API key or client address; 0: none")
    frontend_timeout_ms: int = 500
    file_ttl_s: float = Field(default=1800.0, gt=0, description="translated files are deleted after this long")
    max_file_bytes: int = Field(default=20 << 20, ge=1024, description="largest upload /translate_file takes")
    file_char_limit: int = Field(
        default=200_000, ge=-1, description="characters of text one file may hold for /translate_file; -1: none"
    )
    files_dir: Path | None = Field(
        default=None, description="where translated files wait for download; empty: a fresh temporary directory"
    )
    glossary_dir: Path | None = Field(
        default=None, description="directory of NAME.tsv glossaries (source<TAB>target) requests may name"
    )
    file_timeout_s: float = Field(default=600.0, gt=0, description="time a file's translation may take")
    # access
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    require_api_key: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    # faults: a sentence containing this marker makes its whole batch raise inside the runtime (tests only)
    fault_marker: str = ""
    log_level: str = "info"
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)

    @field_validator("processes")
    @classmethod
    def _processes(cls, value: int) -> int:
        return value or cpu_quota()

    @field_validator("api_keys", "cors_origins", "models", "prefer", "preload", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """`a,b,c` in the environment; a list when built in code."""
        return _split(value)

    @property
    def model_dirs(self) -> list[Path]:
        """The model directories: a listed directory without a manifest that holds model directories
        (what `mtserve import argos --out DIR` writes) stands for each of them."""
        return [d for path in (list(self.models) or [self.model_dir]) for d in _model_dirs_in(path)]

    @property
    def packed_root(self) -> Path | None:
        return packed_dir(self.packed_dir)

    @cached_property
    def intra_op_threads(self) -> int:
        return self.threads or cpu_quota()

    @cached_property
    def batch_workers(self) -> int:
        return self.workers or cpu_quota()

    def process_share(self) -> Settings:
        """The settings of one of `processes` server processes: what bounds the whole service divided
        evenly (rounded up, so that no bound falls to zero), the CPU quota divided where threads and
        workers are not set. One process: these settings."""
        n = self.processes
        if n == 1:
            return self
        cores = max(1, cpu_quota() // n)
        budget = None if self.memory_budget is None else int(self.memory_budget) // n
        share: dict[str, object] = {
            "threads": self.threads or cores,
            "workers": self.workers or cores,
            "queue_size": math.ceil(self.queue_size / n),
            "max_connections": math.ceil(self.max_connections / n),
            "batch_tokens": max(64, self.batch_tokens // n),
            "memory_budget": budget,
        }
        return Settings(**{**self.model_dump(), **share})

    @property
    def files_per_process(self) -> int:
        """How many translated files each process keeps for download."""
        return math.ceil(MAX_STORED_FILES / self.processes)
