"""The ASGI app, served by ``python -m app`` (settings from ``CATDOG_*`` environment variables).

Its lifespan starts the ``InferenceService`` (and the gRPC server, with
``CATDOG_GRPC_ADDRESS``) before serving. Shutdown has two moments: ``shutdown_started``
runs as soon as the server is told to stop (``python -m app`` calls it on SIGTERM, before
uvicorn drains HTTP): ``/readyz`` turns 503, gRPC health NOT_SERVING, and the gRPC server
refuses new calls while those in flight finish; the lifespan's end waits for both and
drains the service.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api import routes
from app.api.grpc_server import GrpcServer
from app.core.config import Settings, get_settings
from app.core.errors import ModelLoadError, register_error_handlers
from app.core.metrics import Metrics
from app.core.service import InferenceService
from app.ops.install import close as close_ops
from app.ops.install import grpc_interceptors, install
from app.ops.install import started as ops_started
from app.ops.tracing import server_spans
from app.protocols.oip import routes as v2
from app.protocols.predict import routes as predict
from app.protocols.tfserving import routes as tfserving

log = logging.getLogger("catdog")
if not log.handlers:  # uvicorn configures its own loggers; ours logs beside them
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)


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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app around one ``InferenceService``; its model loads in the lifespan."""
    app = FastAPI(
        title="catdog",
        version="0.1.0",
        lifespan=lifespan,
        description="Cat or dog? Upload a photo to POST /predict.",
        telemetry=server_spans(),  # FastAPI's own OpenTelemetry server spans (app.ops.tracing)
    )
    app.state.service = InferenceService(settings or get_settings(), Metrics())
    register_error_handlers(app)
    for module in (predict, routes, v2, tfserving):
        app.include_router(module.router)
    install(app)  # the gate's middleware (app.core.gate), JSON logs, traces, payload log
    return app


app = create_app()
