"""Wire the operations layer into an app and its gRPC server, from the app's settings.

``install(app)`` (called by ``app.main.create_app``) adds the app's one middleware,
``app.core.gate.GateMiddleware`` (request id, API keys, access line, the gate), the
JSON log format and the payload log (REST server spans: ``app.ops.tracing.server_spans``,
given to ``FastAPI`` itself); ``grpc_interceptors``
gives the gRPC server its interceptors (trace spans first, then
``app.core.gate.GateInterceptor``, so the request id and key check run inside the
call's span). With every part off, only the request ids and the gate run.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.core.gate import GateInterceptor, GateMiddleware
from app.core.service import InferenceService
from app.ops import logs, tracing
from app.ops.keys import ApiKeys
from app.ops.payload_log import PayloadLog

# Probes get no span on gRPC either (``app.ops.tracing.UNTRACED`` on REST).
UNTRACED_METHODS = ("ServerLive", "ServerReady", "ModelReady")  # and grpc.health.v1


def install(app: FastAPI) -> None:
    """Add what the settings of ``app.state.service`` switch on."""
    service: InferenceService = app.state.service
    settings = service.settings
    json_logs = settings.log_format == "json"
    if json_logs:  # first: reading the keys logs a line
        logs.configure_json()
    keys = ApiKeys(settings.api_keys_file, service.metrics) if settings.api_keys_file else None
    if settings.payload_log:
        service.payload_log = PayloadLog(
            settings.payload_log, settings.payload_log_rate, service.metrics
        )
    app.state.ops = GateInterceptor(service, keys, json_logs)
    app.add_middleware(GateMiddleware, keys=keys, access_log=json_logs)


def started(app: FastAPI) -> None:
    """At startup: take the loggers back from a launcher that configured its own."""
    if app.state.service.settings.log_format == "json":
        logs.configure_json()


def grpc_interceptors(app: FastAPI) -> list[Any]:
    """The gRPC server's interceptors: trace spans, then request ids, keys and access lines."""
    ops = [app.state.ops] if hasattr(app.state, "ops") else []
    tracer_provider = tracing.provider()
    if tracer_provider is None:
        return ops
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    probes = filters.any_of(filters.health_check(), *map(filters.method_name, UNTRACED_METHODS))
    traced = aio_server_interceptor(tracer_provider=tracer_provider, filter_=filters.negate(probes))
    return [traced, *ops]


def close(app: FastAPI) -> None:
    """Flush the payload log and the spans (at the lifespan's end)."""
    payload_log = getattr(app.state.service, "payload_log", None)
    if payload_log is not None:
        payload_log.close()
    tracing.shutdown()
