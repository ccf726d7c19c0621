"""OpenTelemetry traces, switched on by the standard ``OTEL_*`` variables.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
set (and neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``). The
exporter is OTLP over ``http/protobuf`` (the specification's default) or ``grpc``
(``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``); it
reads its endpoint, headers and timeout from the same variables itself, and the
resource reads ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service name
``catdog`` when unset).

Spans: the server span of each REST request (``opentelemetry-instrumentation-fastapi``)
and gRPC call (``opentelemetry-instrumentation-grpc``), which continue an incoming
``traceparent``; under them the service's own (``app.core.observe``): admission,
decode, queue wait, model call (with the batch size) and encode, each with the
model version and runtime. Off, nothing of OpenTelemetry's SDK is imported.
"""

from __future__ import annotations

import os
from typing import Any

from app.core import observe

_provider: Any = None


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def provider() -> Any:
    """The process's tracer provider, made once (None when traces are off)."""
    global _provider
    if _provider is not None or not wanted():
        return _provider
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    name = os.environ.get("OTEL_SERVICE_NAME") or "catdog"
    resource = Resource.create({"service.name": name}).merge(OTELResourceDetector().detect())
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    observe.set_tracer(_provider.get_tracer("catdog"))
    return _provider


def instrument_app(app: Any) -> None:
    """Server spans for every REST request (no-op when traces are off)."""
    tracer_provider = provider()
    if tracer_provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No span per ASGI receive/send message: a multipart upload arrives in many, and
    # those spans cost more than the request's own stages (bench/results/ops-overhead.md).
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, exclude_spans=["receive", "send"]
    )


def grpc_interceptors() -> list[Any]:
    """The gRPC server interceptor that makes server spans (none when traces are off)."""
    tracer_provider = provider()
    if tracer_provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=tracer_provider)]


def shutdown() -> None:
    """Send the spans still buffered (at the lifespan's end)."""
    if _provider is not None:
        _provider.force_flush(5000)
