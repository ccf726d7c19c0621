"""The ASGI app, served by ``python -m app`` (settings from ``CATDOG_*`` environment variables)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app.api import routes
from app.core.config import Settings, get_settings
from app.core.errors import register_error_handlers
from app.core.gate import GateMiddleware, MetricsMiddleware
from app.core.metrics import Metrics
from app.core.service import InferenceService
from app.lifespan import lifespan
from app.ops.install import install
from app.protocols.oip import routes as v2
from app.protocols.predict import routes as predict
from app.protocols.tfserving import routes as tfserving

_log = logging.getLogger("catdog")
if not _log.handlers:  # uvicorn configures its own loggers; ours logs beside them
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app around one ``InferenceService``; its model loads in the lifespan."""
    app = FastAPI(
        title="catdog",
        version="0.1.0",
        lifespan=lifespan,
        description="Cat or dog? Upload a photo to POST /predict.",
    )
    app.state.service = InferenceService(settings or get_settings(), Metrics())
    app.add_middleware(GateMiddleware)
    app.add_middleware(MetricsMiddleware)
    register_error_handlers(app)
    for module in (predict, routes, v2, tfserving):
        app.include_router(module.router)
    install(app)  # request ids, API keys, JSON logs, traces, payload log (app/ops)
    return app


app = create_app()
