"""Start `mtserve serve` in a child process on a free loopback port and wait until it is ready.

Used by the benchmarks and the end-to-end tests, which need a real uvicorn, signals included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size of a process, from /proc (Linux): its resident memory with each page
    shared with other processes (a memory-mapped weights file) counted in proportion."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of process `pid` from /proc, or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_processes(pid: int) -> list[int]:
    """The server processes of a server of several (MTSERVE_PROCESSES): the children of `pid` that
    run the app, not multiprocessing's helper; one that dies meanwhile is left out."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                found.append(int(child))
    return found


TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


def tcp_sockets(pid: int, port: int, state: str) -> int:
    """How many TCP sockets in `state` (TCP_ESTABLISHED, TCP_LISTEN) process `pid` holds on its
    local `port` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl, local address:port, remote, state, ..., inode (the tenth)
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile
            count += os.readlink(fd) in inodes
    return count


def established_connections(pid: int, port: int) -> int:
    """How many established TCP connections process `pid` holds on its local `port`."""
    return tcp_sockets(pid, port, TCP_ESTABLISHED)


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` listens on `port`: a server process does from the moment it serves."""
    with contextlib.suppress(FileNotFoundError):  # a process that has exited
        return tcp_sockets(pid, port, TCP_LISTEN) > 0
    return False


def metric_value(exposition: str, name: str) -> float:
    """A sample (e.g. `mtserve_queue_depth`, `mtserve_batch_sentences_sum`) from /metrics text, summed over
    its labels (the model label of batch metrics)."""
    values = [
        float(sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]
    if not values:
        raise KeyError(f"{name} is not in the exposition")
    return sum(values)


async def until_each_taken(
    metrics: Callable[[], Awaitable[str]], requests: Sequence[asyncio.Future[Any]], within_s: float = 30.0
) -> None:
    """Until each of `requests` is in the server (in flight by its /metrics, which `metrics` reads in a
    request of its own) or answered: a CPU fast enough answers the first before the last arrives, so
    all are never in flight at once. TimeoutError after `within_s`."""
    deadline = time.monotonic() + within_s
    while metric_value(await metrics(), "mtserve_http_requests_in_flight") - 1 + sum(
        request.done() for request in requests
    ) < len(requests):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {len(requests)} requests were not all taken in {within_s:.0f} s")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    startup_s: float

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, path: str = "/ready", poll_s: float = 0.05
) -> None:
    """Until GET url+path answers 200 (another server's readiness route: `path`), asking every `poll_s`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + path, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"server not ready after {timeout} s")


@contextmanager
def live_server(
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    timeout: float = 60.0,
    python: str | None = None,
    arguments: Sequence[str] = ("-m", "service.cli", "serve"),
    ready_poll_s: float = 0.05,
) -> Iterator[LiveServer]:
    """`mtserve serve` (or the interpreter with other `arguments` that serve) on a free port, until
    ready (asked every `ready_poll_s`); SIGTERM when the block ends."""
    port = free_port()
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_path = log_dir / f"mtserve-{port}.log"
    child_env = {**os.environ, "MTSERVE_HOST": "127.0.0.1", "MTSERVE_PORT": str(port), **(env or {})}
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [python or sys.executable, *arguments],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path, 0.0)
    try:
        wait_ready(server.url, process, timeout, poll_s=ready_poll_s)
        server.startup_s = time.monotonic() - started
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
