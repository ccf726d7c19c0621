"""The launcher: ``python -m app`` serves ``app.main:app`` with bounds on every client.

``uvicorn.Server`` with its ``http=`` protocol inside ``app.connections`` (uvicorn's own
command line bounds nothing a client sends before the app sees a request), the
open-file limit raised to fit ``CATDOG_MAX_CONNECTIONS``, and the app told the moment a
SIGTERM arrives. ``make serve``, the image and the benchmarks start it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import resource
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.connections import bounded_protocol
from app.core.config import Settings

log = logging.getLogger("catdog.server")
STARTUP_FAILURE = 3  # uvicorn's exit code when the app cannot start
KEEP_ALIVE_S = 5  # uvicorn's timeout_keep_alive: an idle connection closes after this
SPARE_FILES = 256  # descriptors beyond the connection cap: model files, logs, pipes


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def build_config(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = True,
    log_level: str | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` with the guarded protocol."""
    settings: Settings = app.state.service.settings
    refusals = app.state.service.metrics.http_refusals

    def count(reason: str) -> None:
        refusals.labels(reason=reason).inc()

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(settings, count, settings.http_parser),
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ws="none",  # no WebSocket routes: an upgrade is a plain request
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        # JSON lines: app.ops.logs configures every logger itself (CATDOG_LOG_FORMAT).
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,  # type: ignore[arg-type]
    )


class Server(uvicorn.Server):
    """uvicorn's server, which also calls ``stopping`` (``app.main.shutdown_started``)
    as soon as it is asked to stop, not only once HTTP has drained."""

    def __init__(self, config: uvicorn.Config, stopping: Callable[[], None]) -> None:
        super().__init__(config)
        self.stopping = stopping

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.running_loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        app = self.config.app
        if first and isinstance(app, FastAPI) and hasattr(app.state, "grpc"):
            self.running_loop.call_soon_threadsafe(self.stopping)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Where to listen and how to log; every other knob is a ``CATDOG_*`` setting."""
    p = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-access-log", action="store_true", help="no line per request")
    p.add_argument("--log-level", default=None, help="uvicorn's: debug, info, warning, ...")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; exit 3 if the app cannot start (as uvicorn does)."""
    args = parse_args(argv)
    from app.main import app, shutdown_started  # ``uvicorn app.main:app``'s, from CATDOG_*

    config = build_config(
        app,
        host=args.host,
        port=args.port,
        access_log=not args.no_access_log,
        log_level=args.log_level,
    )
    settings: Settings = app.state.service.settings
    servers = 2 if settings.grpc_address else 1  # REST's and gRPC's connections
    wanted = servers * settings.max_connections + SPARE_FILES
    files = raise_file_limit(wanted)
    if files < wanted:
        log.warning(
            "open-file limit %d: fewer than CATDOG_MAX_CONNECTIONS=%d connections per server fit",
            files,
            settings.max_connections,
        )
    server = Server(config, functools.partial(shutdown_started, app))
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
