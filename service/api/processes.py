"""`mtserve serve` with MTSERVE_PROCESSES above one: that many server processes listening on one
port, each the whole app with its share of the service's bounds (`Settings.process_share`), so
that no interpreter's lock is shared between the cores.

The parent reserves the port (bound, not listening: the kernel hands it no connection), prepares
what the children share (the metrics directory, the files directory, the rate-limit store),
starts them and then only watches. Each child listens on a socket of its own on the port
(SO_REUSEPORT), among which the kernel spreads new connections by a hash of their addresses.
They are spawned, not forked: onnxruntime's thread pools do not survive a fork. SIGTERM or
SIGINT reaches the parent alone (each child runs in a process group of its own) and is passed on
once to every child, which drains as a server of one process does. A child that dies while the
server runs is replaced; one that fails before it serves stops the server, since its replacement
would fail the same way. uvicorn's own supervisor would run uvicorn's plain server in its
children, without the drain, and pass Ctrl-C on twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE

from service.api import logs
from service.api.affinity import hold_process
from service.api.files import remove_leftovers
from service.api.metrics import MULTIPROCESS_DIR_VARIABLE
from service.api.settings import Settings
from service.api.shared_limits import SHARED_LIMITS_VARIABLE, create_store
from service.runtime.libc import libc

log = logging.getLogger("mtserve.processes")
PR_SET_PDEATHSIG = 1
# Children that die this many times within RESTART_WINDOW_S stop the server instead of restarting.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
POLL_S = 0.5
GATE_POLL_S = 0.02
# uvicorn listens again with its own backlog as it starts serving; this one holds the connections until then.
LISTEN_BACKLOG = 2048
SPAWN = multiprocessing.get_context("spawn")


@dataclass
class StartGate:
    """Every child listens only once all are warm, and serves only once all listen: a client that
    connects when the first answers /ready would otherwise find one process listening, and its
    kept-alive connections would stay there. Each child's wait ends on a poll of its own, so
    without the second count one child could answer for some milliseconds before the other
    listened. A child counts itself warm and waits for the count to reach the processes, listens,
    then does the same with the count of listening ones; a connection that comes meanwhile waits in
    the socket's queue. One that replaces a dead child counts past both and goes on at once."""

    processes: int
    warm: Synchronized[int]
    listening: Synchronized[int]
    stopping: Synchronized[int]  # set by the parent: stop waiting, a signal or a failed child came

    async def open(self, sock: socket.socket) -> None:
        await self._all_at(self.warm)
        sock.listen(LISTEN_BACKLOG)
        await self._all_at(self.listening)

    async def _all_at(self, count: Synchronized[int]) -> None:
        with count.get_lock():
            count.value += 1
        while count.value < self.processes and not self.stopping.value:
            await asyncio.sleep(GATE_POLL_S)


def child_main(settings: Settings, port: int, index: int, gate: StartGate, parent: int) -> None:
    """One server process: its own process group (Ctrl-C goes to the parent only), SIGTERM when the
    parent dies, then the same server as one process runs, on a socket of its own."""
    # Told to stop before it serves (the server stopping while this one replaces a dead one): it
    # has accepted nothing, so that is a clean exit. uvicorn installs its own handler later.
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(0))
    from service.api.server import port_socket, run_server  # the app loads in the child, after the spawn

    os.setpgrp()
    library = libc()
    if library is not None:
        library.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM))
    if os.getppid() != parent:  # the parent died before the request above could take effect
        sys.exit(1)
    # before the app starts its threads: each takes this process's CPUs
    cpus = hold_process(index, settings.processes, settings.intra_op_threads, settings.cpu_affinity)
    logs.configure(settings.log_level)
    held = "any CPU" if cpus is None else f"CPUs {','.join(map(str, sorted(cpus)))}"
    logging.getLogger("mtserve").info("server process %d (pid %d) starting on %s", index, os.getpid(), held)
    try:
        sock = port_socket(settings.host, port)
    except OSError as exc:
        logging.getLogger("mtserve").error("cannot listen on %s port %d: %s", settings.host, port, exc)
        sys.exit(STARTUP_FAILURE)
    started = run_server(settings, [sock], functools.partial(gate.open, sock))
    sys.exit(0 if started or gate.stopping.value else STARTUP_FAILURE)


@dataclass
class Supervisor:
    settings: Settings
    port: int
    gate: StartGate
    children: list[BaseProcess] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    restarts: list[float] = field(default_factory=list)
    failed: bool = False

    def start(self, index: int) -> BaseProcess:
        child = SPAWN.Process(
            target=child_main, args=(self.settings, self.port, index, self.gate, os.getpid()), name=f"mtserve-{index}"
        )
        child.start()
        return child

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            log.info("signal %s: draining %d server processes", sig, len(self.children))
        self.stop_waiting()

    def stop_waiting(self) -> None:
        self.stopping.set()
        self.gate.stopping.value = 1

    def watch(self) -> None:
        """Until a signal or a child that cannot start: replace children that die."""
        while not self.stopping.wait(POLL_S):
            for index, child in enumerate(self.children):
                if child.is_alive():
                    continue
                assert child.pid is not None
                multiprocess.mark_process_dead(child.pid)  # type: ignore[no-untyped-call]
                if child.exitcode == STARTUP_FAILURE:
                    log.error("server process %d failed before it served; stopping the server", index)
                    self.failed = True
                    self.stop_waiting()
                    break
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if t > now - RESTART_WINDOW_S] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    died = len(self.restarts)
                    log.error("server processes died %d times within %.0f s; stopping", died, RESTART_WINDOW_S)
                    self.failed = True
                    self.stop_waiting()
                    break
                log.error(
                    "server process %d (pid %d) exited with %s; starting another", index, child.pid, child.exitcode
                )
                self.children[index] = self.start(index)

    def stop(self) -> bool:
        """SIGTERM to every child, then wait for their drain; True when every one exited cleanly."""
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + self.settings.drain_s + 15
        for child in self.children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.error("server process pid %s did not stop after its drain; killing it", child.pid)
                child.kill()
                child.join()
            # killed by SIGTERM: it came before the child could handle it, so before it served
            clean = clean and child.exitcode in (0, -signal.SIGTERM)
            if child.pid is not None:
                multiprocess.mark_process_dead(child.pid)  # type: ignore[no-untyped-call]
        return clean and not self.failed


def serve_processes(settings: Settings, share: Settings, reserved: socket.socket) -> int:
    """Serve on the port `reserved` is bound to with `settings.processes` children, each with the
    settings `share` (`settings.process_share()`); the exit code."""
    run_dir = Path(tempfile.mkdtemp(prefix="mtserve-run-"))  # what the children share, removed at exit
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    files_dir = share.files_dir or run_dir / "files"
    if share.files_dir is None:
        files_dir.mkdir()
    else:
        with contextlib.suppress(OSError):  # each child's /health reports the directory's state
            files_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(files_dir)
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(metrics_dir)  # read by prometheus_client in each child
    if settings.req_limit > 0:
        os.environ[SHARED_LIMITS_VARIABLE] = str(create_store(run_dir))
    port = reserved.getsockname()[1]  # the port given, or the one the system chose for port 0
    gate = StartGate(settings.processes, SPAWN.Value("i", 0), SPAWN.Value("i", 0), SPAWN.Value("i", 0))
    supervisor = Supervisor(Settings(**{**share.model_dump(), "files_dir": files_dir}), port, gate)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "%d server processes, each with %d intra-op threads, %d batch workers, a queue of %d sentences",
        settings.processes, share.intra_op_threads, share.batch_workers, share.queue_size,
    )  # fmt: skip
    try:
        supervisor.children = [supervisor.start(index) for index in range(settings.processes)]
        supervisor.watch()
        clean = supervisor.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)
        reserved.close()
    return 0 if clean else 1
