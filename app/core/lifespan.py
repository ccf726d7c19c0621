"""Startup and shutdown: start the app's ``InferenceService`` (and its gRPC API, when
``CATDOG_GRPC_ADDRESS`` is set) before serving, drain them after."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api.grpc_server import GrpcServer
from app.core.errors import ModelLoadError
from app.core.service import InferenceService

log = logging.getLogger("catdog")
GRPC_GRACE_S = 5.0  # for gRPC calls in flight at shutdown, within the pod's grace period


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model before serving (fail fast on a bad folder); drain on shutdown."""
    service: InferenceService = app.state.service
    try:
        await service.start()
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        raise RuntimeError(f"catdog cannot start: {exc}") from exc
    grpc_server = None
    try:
        if service.settings.grpc_address:
            grpc_server = GrpcServer(service, app.version)
            await grpc_server.start(service.settings.grpc_address)
            app.state.grpc_port = grpc_server.port
        yield
    finally:
        if grpc_server is not None:  # uvicorn has drained HTTP by now; gRPC calls are short
            await grpc_server.stop(min(GRPC_GRACE_S, service.settings.graceful_shutdown_s))
        await service.stop()
