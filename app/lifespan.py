"""Startup and shutdown: start the app's ``InferenceService`` (and its gRPC API, when
``CATDOG_GRPC_ADDRESS`` is set) before serving, drain them after.

Shutdown has two moments. ``shutdown_started`` runs as soon as the server is told to
stop (``python -m app`` calls it on SIGTERM, before uvicorn drains HTTP): readiness
turns false (``/readyz`` 503, gRPC health NOT_SERVING) and the gRPC server refuses
new calls while those in flight finish, alongside the HTTP drain. The lifespan's end
then waits for both and drains the service.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api.grpc_server import GrpcServer
from app.core.errors import ModelLoadError
from app.core.service import InferenceService
from app.ops.install import close as close_ops
from app.ops.install import grpc_interceptors
from app.ops.install import started as ops_started

log = logging.getLogger("catdog")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model before serving (fail fast on a bad folder); drain on shutdown."""
    service: InferenceService = app.state.service
    ops_started(app)
    try:
        await service.start()
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        raise RuntimeError(f"catdog cannot start: {exc}") from exc
    app.state.grpc = None
    try:
        if service.settings.grpc_address:
            app.state.grpc = GrpcServer(service, app.version, grpc_interceptors(app))
            await app.state.grpc.start(service.settings.grpc_address)
        yield
    finally:
        shutdown_started(app)
        if app.state.grpc is not None:
            await app.state.grpc.stop(service.settings.graceful_shutdown_s)
        await service.stop()
        close_ops(app)


def shutdown_started(app: FastAPI) -> None:
    """Stop reporting ready and stop taking gRPC calls (once; on the event loop)."""
    service: InferenceService = app.state.service
    service.accepting = False
    grpc_server: GrpcServer | None = getattr(app.state, "grpc", None)
    if grpc_server is not None:
        grpc_server.begin_stop(service.settings.graceful_shutdown_s)
