"""What the request path tells the operations layer (``app/ops``), at no cost when unused.

``RequestContext`` is one request as ``app.ops`` follows it, passed along explicitly (no
context variable): in the ASGI scope (``REQUEST_KEY``) or on the gRPC servicer context
(that attribute), found by ``request_of``; the gate copies it onto the ``Upload`` so that
the service notes its answers on it. ``span``, ``capture`` and ``record`` make the
service's OpenTelemetry spans once ``app.ops.tracing`` sets a tracer; until then no
OpenTelemetry code runs. This module imports nothing from the layers above.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REQUEST_KEY = "catdog_request"  # the RequestContext: ASGI scope key, gRPC context attribute


@dataclass
class RequestContext:
    """One request (REST or gRPC) as the operations layer follows it."""

    request_id: str
    protocol: str  # "rest" or "grpc"
    route: str = ""
    key_id: str | None = None
    model_version: str | None = None
    labels: list[str] = field(default_factory=list)

    def answered(self, answers: Sequence[Any]) -> None:
        """Note the model version and labels of the request's answers."""
        for answer in answers:
            self.model_version = answer.model_version
            self.labels.append(answer.label)


def request_of(carrier: Any) -> RequestContext | None:
    """The request ``app.ops`` follows, from an ASGI scope (REST) or a gRPC servicer
    context; None when the operations layer is not in front."""
    if isinstance(carrier, dict):
        return carrier.get(REQUEST_KEY)
    return getattr(carrier, REQUEST_KEY, None)


# ---------------------------------------------------------------- tracing

_tracer: Any = None  # an opentelemetry Tracer once app.ops.tracing switched tracing on
_NULL = contextlib.nullcontext()


def set_tracer(tracer: Any) -> None:
    """Switch the service's spans on (``None``: off)."""
    global _tracer
    _tracer = tracer


def capture() -> Any:
    """The current request's trace context, to parent its stages: None when tracing is
    off or the sampler left the request out (``OTEL_TRACES_SAMPLER``), so that such a
    request makes no stage at all. A request asks once and passes the answer along."""
    if _tracer is None:
        return None
    from opentelemetry import context, trace

    current = context.get_current()
    return current if trace.get_current_span(current).is_recording() else None


def span(name: str, parent: Any, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span around a stage, under ``parent`` (from ``capture``); a null context when
    that is None."""
    if parent is None or _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, context=parent, attributes=attributes)


def wall_ns(perf_seconds: float) -> int:
    """A ``time.perf_counter()`` reading as epoch nanoseconds (span times)."""
    return time.time_ns() - int((time.perf_counter() - perf_seconds) * 1e9)


def record(name: str, parent: Any, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished span with explicit times under ``parent`` (from ``capture``)."""
    if _tracer is None or parent is None:
        return
    item = _tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    item.end(end_time=end_ns)


def record_since(name: str, parent: Any, perf_start: float, **attributes: Any) -> None:
    """A finished span under ``parent``, from ``perf_start`` (a ``time.perf_counter()``
    reading) to now; nothing when ``parent`` is None."""
    if parent is not None:
        record(name, parent, wall_ns(perf_start), time.time_ns(), **attributes)
