"""`mtserve serve`: uvicorn with the app; SIGTERM turns /ready to 503 and drains before exit."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import uvicorn

from service.api import logs
from service.api.connections import guarded_protocol
from service.api.models import ModelSetError, read_installed
from service.api.residency import BudgetError, check_budget
from service.api.settings import Settings
from service.manifest import ModelFileError

log = logging.getLogger("mtserve.server")
SWITCH_INTERVAL_S = 0.0005


class DrainingServer(uvicorn.Server):
    """Marks the service draining the moment a shutdown signal arrives, then lets uvicorn stop
    accepting and finish the requests it has, within timeout_graceful_shutdown."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "state", None), "mt", None) if app is not None else None
        if state is None:  # loaded_app is wrapped in middleware; find the FastAPI app's state
            inner = getattr(app, "app", None)
            state = getattr(getattr(inner, "state", None), "mt", None)
        if state is not None:
            state.draining, state.ready = True, False
        log.info("signal %s: draining (up to %s s)", sig, self.config.timeout_graceful_shutdown)
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn re-raises captured signals at exit; a drained SIGTERM is a clean stop: exit 0
            self._captured_signals.remove(sig)


def serve(settings: Settings) -> int:
    logs.configure(settings.log_level)
    try:  # fail before uvicorn starts, with one line that names the file, the conflict or the model
        share = settings.process_share()
        entries = read_installed(share.model_dirs, share.prefer, single_name=share.model_name)
        check_budget(entries, share.memory_budget, share.preload, share.packed_root is not None)
    except (ModelFileError, ModelSetError, BudgetError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    if settings.processes == 1:
        return 0 if run_server(settings) else 1
    try:
        reserved = port_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot start: cannot listen on %s port %d: %s", settings.host, settings.port, exc.strerror or exc)
        return 2
    from service.api.processes import serve_processes

    return serve_processes(settings, share, reserved)


def port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to the port with SO_REUSEPORT: each server process listens on one of its own,
    and the kernel spreads new connections evenly over them (one shared listening socket leaves
    them to whichever process accepts first, often one process taking a whole burst)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_server(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    start_gate: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """The app under uvicorn until a signal ends its drain; whether it started serving. uvicorn
    serves once the app has started: `start_gate`, awaited last in the app's start-up, holds that
    (a process of several listens there once all are warm, then waits until all listen)."""
    from service.api.app import create_app

    app = create_app(settings, start_gate)
    # Inference runs in a worker thread that needs the GIL back for a moment after every
    # decoder step; with the default 5 ms switch interval a busy event loop holds it that long
    # each time (measured under load in docs/BENCHMARKS.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_s),
        timeout_keep_alive=settings.keepalive_s,
        http=guarded_protocol(settings.header_timeout_s, settings.max_connections, settings.retry_after_s),
        lifespan="on",
    )
    server = DrainingServer(config)
    server.run(sockets)
    return bool(server.started)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    for name in ("host", "port", "threads", "processes"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.model:
        overrides["models"] = [Path(m) for m in args.model]
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return serve(settings)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="serve the HTTP API (settings: MTSERVE_* environment variables)")
    parser.add_argument("--host", default=None, help="listen address (MTSERVE_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="listen port (MTSERVE_PORT, default 8000)")
    parser.add_argument(
        "--model",
        action="append",
        help="model directory; repeat to serve several (MTSERVE_MODELS, default: the committed model)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads of each process (MTSERVE_THREADS; 0: CPU quota)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="server processes sharing the port; 0: one per core (MTSERVE_PROCESSES, default 1)",
    )
    parser.set_defaults(handler=run)
