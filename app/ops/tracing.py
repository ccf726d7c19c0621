"""OpenTelemetry traces, switched on by the standard ``OTEL_*`` variables.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
set (and neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``). The
exporter is OTLP over ``http/protobuf`` (the specification's default) or ``grpc``
(``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``); the SDK
reads the endpoint, headers, timeouts, sampler (``OTEL_TRACES_SAMPLER``) and batch
processor (``OTEL_BSP_*``) from the same variables itself, and the resource reads
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service name ``catdog`` when
unset). With this provider, FastAPI makes the server span of each REST request
(``server_spans``), ``app.ops.install`` the gRPC interceptor's, and
``app.core.observe`` the service's stages (``StageTracer``). Off, nothing of
OpenTelemetry's SDK is imported.

What a traced request costs, and where: ``bench/results/ops-overhead.md``. Three
things here trim it: FastAPI's own server spans, the stages not being SDK spans
(``StageTracer``), and the resource keeping its hash (``make_resource``).
"""

from __future__ import annotations

import os
import random
import re
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util import types

from app.core import observe

# Probes and scrapes get no span (a kubelet and Prometheus call them every few seconds):
# regular expressions searched in the path, beside the operator's own. No ``.+``: searched
# in a 32 KB path of "/v2/models/" over and over, it held the event loop for 130 ms.
UNTRACED = (
    r"/(healthz|readyz|metrics)$",
    r"/v2/health/(live|ready)$",
    r"/v2/models/[^/]+(/versions/[^/]+)?/ready$",
)
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
    default_propagator(env)
    resource = make_resource(env.get("OTEL_SERVICE_NAME") or "catdog")
    _provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(OTLPSpanExporter())
    _provider.add_span_processor(processor)
    observe.set_tracer(StageTracer(processor, resource))
    return _provider


def server_spans(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``FastAPI(telemetry=...)``: with traces on, FastAPI's own server span for each REST
    request, from this process's provider, except on ``untraced`` paths; FastAPI's own
    metrics, logs, per-operation spans and exporters stay off (``/metrics``, the JSON
    logs and the service's stages say it; the provider has its exporter). With traces
    off, none of FastAPI's telemetry runs.

    Why FastAPI's own and not ``opentelemetry-instrumentation-fastapi``'s middleware:
    that one costs every request, recorded or not, ~110 µs on the event loop (it
    collects the span's attributes and matches the route a second time before the
    sampler decides), FastAPI's ~30 µs (it names the span from its own routing);
    measured in-process on a traced route, nothing sampled. Under load, one request in
    ten traced: ``bench/results/ops-overhead.md``."""
    off = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    if provider() is None:
        return off
    return {
        **off,
        "tracing": True,
        "tracer_provider": _provider,
        "operation_spans": False,
        "exclude": untraced(env),
    }


def untraced(env: Mapping[str, str] = os.environ) -> Callable[[Mapping[str, Any]], bool]:
    """FastAPI's ``exclude``: whether a request's path is one of ``UNTRACED`` or of the
    regular expressions the operator lists in ``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` (or
    ``OTEL_PYTHON_EXCLUDED_URLS``), OpenTelemetry Python's comma-separated list."""
    chosen = env.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or env.get("OTEL_PYTHON_EXCLUDED_URLS")
    patterns = [p.strip() for p in (chosen or "").split(",") if p.strip()] + list(UNTRACED)
    search = re.compile("|".join(patterns)).search
    return lambda scope: search(scope.get("path", "")) is not None


def default_propagator(env: Mapping[str, str] = os.environ) -> None:
    """W3C Trace Context alone unless ``OTEL_PROPAGATORS`` says otherwise. The SDK's
    default adds baggage, which the service never reads and whose parser logs a whole
    malformed header (up to 32 KB) at every request that sends one."""
    if not env.get("OTEL_PROPAGATORS", "").strip():
        from opentelemetry import propagate
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagate.set_global_textmap(TraceContextTextMapPropagator())


def make_resource(name: str) -> Any:
    """The process's resource (``OTEL_RESOURCE_ATTRIBUTES``, the service name), hashed
    once: the OTLP encoder groups spans by resource, and ``Resource.__hash__`` writes
    its attributes out as JSON every time, for every span exported (~9% of what a
    traced request costs). A resource never changes, so neither does its hash."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    class HashedOnce(Resource):
        def __init__(self, attributes: types.Attributes, schema_url: str | None = None):
            super().__init__(attributes, schema_url)
            self.hashed = super().__hash__()

        def __hash__(self) -> int:
            return self.hashed

    found = Resource.create({"service.name": name}).merge(OTELResourceDetector().detect())
    return HashedOnce(found.attributes, found.schema_url)


def shutdown() -> None:
    """Send the spans still buffered (at the lifespan's end)."""
    if _provider is not None:
        _provider.force_flush(5000)


# ---------------------------------------------------------------- the stages' spans

_UNSET = trace.Status(trace.StatusCode.UNSET)


class StageTracer(trace.Tracer):
    """The tracer of the service's stages (``app.core.observe``): spans with no children
    of their own, under a request's recording span, made whole when they end and handed
    to the batch processor as the SDK's finished spans (``ReadableSpan``).

    Why not the SDK's tracer: its spans cost ~20 µs each to start and end (the sampler,
    a lock, attribute cleaning, bounded lists, then a copy at the end), and a request
    makes five stages; these cost a quarter of that. ``ReadableSpan``'s docstring asks
    users not to make one, but it is what the SDK's processors and exporters take, and
    the one public way to hand them a span. A stage follows its request's sampling, as
    the SDK's default ``parentbased_*`` samplers decide: none under a span that does
    not record. Span limits (``OTEL_SPAN_*``) do not apply; a stage has at most four
    attributes.
    """

    def __init__(self, processor: Any, resource: Any) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._finished = ReadableSpan
        self._processor = processor
        self._resource = resource
        self._scope = InstrumentationScope("catdog")

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Any = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if not parent.trace_flags.sampled:
            return trace.NonRecordingSpan(parent)
        return StageSpan(self, name, parent, attributes, start_time or time.time_ns())

    def start_as_current_span(  # type: ignore[override]  # a context manager all the same
        self,
        name: str,
        context: Any = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Any = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Current:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return Current(span, end_on_exit, record_exception, set_status_on_exception)

    def finish(self, span: StageSpan, end_time: int) -> None:
        """Hand a stage that ended to the batch processor, as the SDK's finished span."""
        finished = self._finished(
            span.name,
            span.get_span_context(),
            span.parent,
            self._resource,
            span.attributes,
            span.events,
            (),
            trace.SpanKind.INTERNAL,
            None,
            span.status,
            span.start_time,
            end_time,
            self._scope,
        )
        self._processor.on_end(finished)


class Current:
    """``start_as_current_span``'s context manager: the span is current inside, and ends
    on the way out, with the exception that left it recorded (as ``trace.use_span``)."""

    __slots__ = ("span", "end_on_exit", "record_exception", "set_status", "token")

    def __init__(self, span: trace.Span, end_on_exit: bool, record: bool, status: bool) -> None:
        self.span, self.end_on_exit = span, end_on_exit
        self.record_exception, self.set_status = record, status

    def __enter__(self) -> trace.Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        otel_context.detach(self.token)
        span = self.span
        if isinstance(error, Exception) and span.is_recording():
            if self.record_exception:
                span.record_exception(error)
            if self.set_status:
                span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
        if self.end_on_exit:
            span.end()


class StageSpan(trace.Span):
    """One stage of a request, recording until it ends (see ``StageTracer``)."""

    __slots__ = ("tracer", "name", "parent", "attributes", "start_time", "span_id")
    __slots__ += ("events", "status", "ended")

    def __init__(
        self,
        tracer: StageTracer,
        name: str,
        parent: trace.SpanContext,
        attributes: types.Attributes,
        start_time: int,
    ) -> None:
        self.tracer = tracer
        self.name = name
        self.parent = parent
        self.attributes = dict(attributes) if attributes else {}
        self.start_time = start_time
        self.span_id = random.getrandbits(64)
        self.events: list[Any] = []
        self.status = _UNSET
        self.ended = False

    def end(self, end_time: int | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.tracer.finish(self, end_time or time.time_ns())

    def get_span_context(self) -> trace.SpanContext:
        parent = self.parent
        return trace.SpanContext(
            parent.trace_id, self.span_id, False, parent.trace_flags, parent.trace_state
        )

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if not self.ended:
            self.attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if not self.ended:
            self.attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if not self.ended:
            from opentelemetry.sdk.trace import Event

            self.events.append(Event(name, attributes, timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        if not self.ended:
            self.name = name

    def is_recording(self) -> bool:
        return not self.ended

    def set_status(self, status: Any, description: str | None = None) -> None:
        if not self.ended:
            self.status = (
                status if isinstance(status, trace.Status) else trace.Status(status, description)
            )

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
        fields = {
            "exception.type": module + kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
            **(attributes or {}),
        }
        self.add_event("exception", fields, timestamp)
