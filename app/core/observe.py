"""What the request path tells the operations layer (``app/ops``), at no cost when unused.

* ``CURRENT`` holds the ``RequestContext`` of the request being answered (set by the
  REST middleware and the gRPC interceptor of ``app.ops``); the service notes the
  model version and labels it answered with, for the access log line.
* ``span`` / ``capture`` / ``record``: OpenTelemetry spans for the service's stages.
  They do nothing until ``app.ops.tracing`` sets a tracer (``OTEL_*`` variables);
  until then ``span`` returns a shared null context and no OpenTelemetry code runs.

The core imports no API or operations module: the layers above fill these in.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestContext:
    """One request (REST or gRPC) as the operations layer follows it."""

    request_id: str
    protocol: str  # "rest" or "grpc"
    route: str = ""
    key_id: str | None = None
    model_version: str | None = None
    labels: list[str] = field(default_factory=list)


CURRENT: ContextVar[RequestContext | None] = ContextVar("catdog_request", default=None)


def note_answer(model_version: str, label: str) -> None:
    """Record an image's answer on the current request, if one is being followed."""
    context = CURRENT.get()
    if context is not None:
        context.model_version = model_version
        context.labels.append(label)


# ---------------------------------------------------------------- tracing

_tracer: Any = None  # an opentelemetry Tracer once app.ops.tracing switched tracing on
_NULL = contextlib.nullcontext()


def set_tracer(tracer: Any) -> None:
    """Switch the service's spans on (``None``: off)."""
    global _tracer
    _tracer = tracer


def tracing() -> bool:
    """Whether spans are recorded."""
    return _tracer is not None


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span around a stage of the current request; a null context when tracing is off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def capture() -> Any:
    """The current trace context, to parent spans recorded later (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def wall_ns(perf_seconds: float) -> int:
    """A ``time.perf_counter()`` reading as epoch nanoseconds (span times)."""
    return time.time_ns() - int((time.perf_counter() - perf_seconds) * 1e9)


def record(name: str, parent: Any, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished span with explicit times under ``parent`` (from ``capture``)."""
    if _tracer is None or parent is None:
        return
    item = _tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    item.end(end_time=end_ns)


def record_since(name: str, perf_start: float, **attributes: Any) -> None:
    """A finished span under the current context, from ``perf_start`` (a
    ``time.perf_counter()`` reading) to now; nothing when tracing is off."""
    if _tracer is None:
        return
    record(name, capture(), wall_ns(perf_start), time.time_ns(), **attributes)
