"""OpenTelemetry traces, switched on by the standard ``OTEL_*`` variables.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
set (and neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``). The
exporter is OTLP over ``http/protobuf`` (the specification's default) or ``grpc``
(``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``); the SDK
reads the endpoint, headers, timeouts, sampler (``OTEL_TRACES_SAMPLER``) and batch
processor (``OTEL_BSP_*``) from the same variables itself, and the resource reads
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service name ``catdog`` when
unset). ``app.ops.install`` adds the server spans of REST requests and gRPC calls
with this provider; ``app.core.observe`` the service's stages. Off, nothing of
OpenTelemetry's SDK is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from app.core import observe

_provider: Any = None


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    off = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    off = off or env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(endpoint) and not off


def provider() -> Any:
    """The process's tracer provider, made once (None when traces are off)."""
    global _provider
    if _provider is not None or not wanted():
        return _provider
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    env = os.environ
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", ""
    )
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    name = env.get("OTEL_SERVICE_NAME") or "catdog"
    resource = Resource.create({"service.name": name}).merge(OTELResourceDetector().detect())
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    observe.set_tracer(_provider.get_tracer("catdog"))
    return _provider


def shutdown() -> None:
    """Send the spans still buffered (at the lifespan's end)."""
    if _provider is not None:
        _provider.force_flush(5000)
