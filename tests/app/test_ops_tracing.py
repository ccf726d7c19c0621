"""The stages' spans (``app.ops.tracing.StageTracer``) and what is left untraced, in-process.

The spans of a real server reaching a real OTLP receiver: ``test_ops.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from app.core import observe
from app.core.batcher import _record_spans
from app.ops.tracing import StageTracer, default_propagator, make_resource, server_spans, untraced

VERSION = {"catdog.model_version": "5", "catdog.runtime": "litert"}


@pytest.fixture
def exported() -> Iterator[tuple[trace.Tracer, StageTracer, InMemorySpanExporter]]:
    """(the SDK's tracer, a StageTracer beside it, what both exported)."""
    spans = InMemorySpanExporter()
    processor = SimpleSpanProcessor(spans)
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}))
    provider.add_span_processor(processor)
    yield provider.get_tracer("t"), StageTracer(processor, provider.resource), spans
    provider.shutdown()


@pytest.fixture
def observed(exported) -> Iterator[tuple[trace.Tracer, StageTracer, InMemorySpanExporter]]:
    """``exported``, with its StageTracer as the service's (``app.core.observe``)."""
    observe.set_tracer(exported[1])
    yield exported
    observe.set_tracer(None)


def test_stages_are_children_of_the_request_span(exported) -> None:
    sdk, stages, spans = exported
    with sdk.start_as_current_span("POST /predict", kind=trace.SpanKind.SERVER) as request:
        parent = context.get_current()
        with stages.start_as_current_span("decode", attributes={**VERSION, "catdog.images": 1}):
            inside = trace.get_current_span()
        begun = time.time_ns()
        stages.start_span("model call", context=parent, start_time=begun, attributes=VERSION).end(
            end_time=begun + 3_000_000
        )
    decode, call, server = spans.get_finished_spans()
    ids = request.get_span_context()
    assert inside.get_span_context() == decode.context and decode.context.is_valid
    for stage in (decode, call):
        assert stage.context.trace_id == ids.trace_id and stage.parent.span_id == ids.span_id
        assert stage.context.span_id != ids.span_id and stage.kind == trace.SpanKind.INTERNAL
        assert stage.resource is server.resource
        assert stage.status.status_code == trace.StatusCode.UNSET
    assert decode.start_time <= decode.end_time and dict(decode.attributes)["catdog.images"] == 1
    assert (call.start_time, call.end_time) == (begun, begun + 3_000_000)
    assert dict(call.attributes) == VERSION and call.name == "model call"
    assert decode.context.span_id != call.context.span_id


def test_a_failed_stage_says_why(exported) -> None:
    sdk, stages, spans = exported
    with (
        sdk.start_as_current_span("request"),
        pytest.raises(ValueError),
        stages.start_as_current_span("decode"),
    ):
        raise ValueError("not an image")
    decode = spans.get_finished_spans()[0]
    assert decode.status.status_code == trace.StatusCode.ERROR
    assert decode.status.description == "ValueError: not an image"
    [event] = decode.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert "not an image" in event.attributes["exception.stacktrace"]


def test_no_stage_under_a_request_not_sampled(exported) -> None:
    sdk, stages, spans = exported
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("t")
    with unsampled.start_as_current_span("request"):
        with stages.start_as_current_span("decode") as decode:
            assert not decode.is_recording()
        stages.start_span("admission").end()
    stages.start_span("no request at all").end()
    assert spans.get_finished_spans() == ()


def test_a_request_asks_once_whether_it_is_traced(observed) -> None:
    """``observe.capture`` is None under a request the sampler left out, and every stage
    given that None is skipped; under a recorded request the stages are its children."""
    sdk, _, spans = observed
    with TracerProvider(sampler=ALWAYS_OFF).get_tracer("t").start_as_current_span("out"):
        left_out = observe.capture()
        with observe.span("decode", left_out) as nothing:
            observe.record_since("admission", left_out, time.perf_counter())
    with sdk.start_as_current_span("POST /predict") as request:
        traced = observe.capture()
    with observe.span("decode", traced, **VERSION):  # later, outside: the parent holds
        pass
    observe.record_since("admission", traced, time.perf_counter() - 0.002)
    assert left_out is None and nothing is None and traced is not None
    server, decode, admission = spans.get_finished_spans()
    assert [s.name for s in (server, decode, admission)] == ["POST /predict", "decode", "admission"]
    for stage in (decode, admission):
        assert stage.parent.span_id == request.get_span_context().span_id
    assert dict(decode.attributes) == VERSION
    assert admission.end_time - admission.start_time >= 2_000_000


def test_a_stage_ends_once(exported) -> None:
    _, stages, spans = exported
    root = trace.NonRecordingSpan(
        trace.SpanContext(1, 2, False, trace.TraceFlags(trace.TraceFlags.SAMPLED))
    )
    span = stages.start_span("encode", context=trace.set_span_in_context(root))
    span.set_attribute("catdog.images", 2)
    span.end()
    span.end()
    span.set_attribute("late", True)
    [encode] = spans.get_finished_spans()
    assert dict(encode.attributes) == {"catdog.images": 2} and encode.parent.span_id == 2


def test_the_resource_hashes_as_the_sdk_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed once (the OTLP encoder hashes it per span), equal to the SDK's own."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    resource = make_resource("catdog-test")
    same = Resource(dict(resource.attributes), resource.schema_url)
    assert resource == same and hash(resource) == hash(same)
    assert resource.attributes["service.name"] == "catdog-test"
    assert resource.attributes["deployment.environment"] == "test"


def test_probes_are_left_untraced() -> None:
    excluded = untraced({})
    probes = ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/v2/health/live")
    for path in (*probes, "/v2/models/c/ready", "/v2/models/c/versions/2/ready"):
        assert excluded({"path": path}), path
    for path in ("/predict", "/v2/models/c/infer", "/v1/models/c:predict", "/", "/docs"):
        assert not excluded({"path": path}), path
    operator = untraced({"OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": " /docs , ,/redoc,"})
    assert operator({"path": "/docs"}) and operator({"path": "/redoc"})
    assert not operator({"path": "/predict"}), "an empty entry excluded everything"
    assert operator({"path": "/readyz"})


def test_fastapi_adds_no_exporter_and_no_telemetry_when_traces_are_off() -> None:
    off = server_spans({})  # auto_configure set: FASTAPI_OTEL_AUTO_CONFIGURE cannot turn it on
    assert off["auto_configure"] is False and off["tracing"] is False
    assert off["metrics"] is False and off["logs"] is False


def test_trace_context_alone_unless_the_operator_names_propagators() -> None:
    before = propagate.get_global_textmap()
    try:
        default_propagator({"OTEL_PROPAGATORS": "tracecontext,baggage"})
        assert propagate.get_global_textmap() is before
        default_propagator({})
        assert propagate.get_global_textmap().fields == {"traceparent", "tracestate"}
    finally:
        propagate.set_global_textmap(before)


def test_every_image_of_a_batch_counts_in_its_size(observed) -> None:
    """Traced or not, the batch size is the model call's; only traced images get spans."""
    sdk, _, spans = observed
    model = SimpleNamespace(version="5", runtime_name="litert")
    with sdk.start_as_current_span("POST /predict"):
        traced = observe.capture()
    now = time.perf_counter()
    _record_spans(model, [(traced, now - 0.01)], now - 0.005, now - 0.004, now, 8)
    names = {s.name: dict(s.attributes) for s in spans.get_finished_spans()}
    assert set(names) == {"POST /predict", "queue wait", "model call"}
    assert names["model call"] == {**VERSION, "catdog.batch_size": 8}
