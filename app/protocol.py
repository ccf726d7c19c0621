"""The guarded HTTP protocol of ``python -m app``: bounds on every client before the app.

uvicorn's own command line bounds nothing that a client sends before the app sees
a request: with httptools, header bytes are buffered without limit (and their
cost grows with the square of their size), a client may send its headers or its
body one byte a minute for ever, and any number of such connections stay open.
The launcher (``app/server.py``) runs uvicorn with the httptools parser in
:class:`GuardedProtocol`, which adds, from the settings (``CATDOG_*``):

* **header bounds**: request line plus headers at most ``max_header_bytes``,
  counted while they arrive (so a huge header is refused after that many bytes,
  not parsed), and at most ``max_header_count`` headers: 431;
* **header timeout**: once a request's first byte arrived (or the connection
  opened), its line and headers must be complete within ``header_timeout_s``:
  408 and closed (a connection that sent nothing is closed without a word);
* **body timeout**: while a request body arrives (read by the app, or being
  discarded after an early answer), a pause of ``body_timeout_s`` with nothing
  received: 408 and closed. Time when the app is not reading (flow control has
  paused the socket) is not the client's and does not count;
* **connection cap**: past ``max_connections`` open connections, a new one
  closes the longest-waiting connection that is not being answered (idle
  keep-alive, or still sending headers: the latter gets a 503 first); if every
  connection is being answered, the newcomer's request gets a 503;
* **refusal before the app**: a prediction request (a path ``body_limit``
  knows) arriving while no image would be admitted is answered here, without
  the ASGI stack: its 503 is held ``busy_hold_s`` (so a client that retries at
  once cannot spin) and its body is discarded unread. It is counted in
  ``/metrics`` as the app would count it. The app's own gate refuses the same
  way for anything that gets past this check (``uvicorn app.main:app``, tests).

Every answer this layer gives itself is JSON ``{"detail": ...}`` with
``Connection: close``, counted by reason in ``catdog_http_refusals_total`` (as are
connections it closes without an answer); a request the body timeout cut off is
also counted as 408 for its route (the app sees its client leave).

Why httptools and not h11: h11 bounds header bytes by itself, but parses a
request in ~150 µs of Python against ~4 µs for httptools; under overload every
refused request is parsed too (``bench/results/overload.md``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.errors import TIMED_OUT_KEY
from app.api.middleware import body_limit, route_label
from app.api.protocols.errors import error_body, error_shape
from app.core.config import Settings
from app.core.errors import QueueFullError
from app.core.service import InferenceService

log = logging.getLogger("catdog.server")


@dataclass(frozen=True)
class Limits:
    """What one client may hold, from the settings."""

    max_connections: int
    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits ``settings`` name."""
        return cls(
            settings.max_connections,
            settings.max_header_bytes,
            settings.max_header_count,
            settings.header_timeout_s,
            settings.body_timeout_s,
        )


class _HeaderLimit(Exception):
    """Raised inside a parser callback to stop parsing a request over a header bound."""


def json_answer(status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP/1.1 answer ``{"detail": detail}`` that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    lines = [STATUS_LINE[status]]
    for name, value in [
        *headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]:
        lines += [name, b": ", value, b"\r\n"]
    return b"".join([*lines, b"\r\n", body])


async def too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI answer to a request on a connection past the cap (every other one busy)."""
    body = json.dumps({"detail": "too many connections; retry shortly"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeldRefusal:
    """The ASGI answer to a prediction request that would not be admitted: a held 503."""

    def __init__(self, service: InferenceService, reason: QueueFullError) -> None:
        self.service = service
        self.reason = reason

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.service.settings
        started = self.loop_time()
        await asyncio.sleep(settings.busy_hold_s)  # the body is discarded by the protocol
        message = f"server busy: {self.reason}; retry shortly"
        shape = error_shape(scope["path"])
        body = json.dumps(error_body(message, shape) if shape else {"detail": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(settings.retry_after_s).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        metrics = self.service.metrics
        route = route_label(scope["path"])
        metrics.requests.labels(route=route, method="POST", status="503").inc()
        metrics.latency.labels(route=route).observe(self.loop_time() - started)

    @staticmethod
    def loop_time() -> float:
        """The running loop's clock."""
        return asyncio.get_running_loop().time()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header bounds, timeouts, a connection cap and
    early refusal of prediction requests that would not be admitted."""

    limits: ClassVar[Limits]  # set on the subclass :func:`protocol_for` makes
    service: ClassVar[InferenceService]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served_app = self.app
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_headers = False  # a request's first byte arrived, its headers are not complete
        self._header_bytes = 0  # bytes received while its headers were incomplete
        self._header_size = 0  # its URL, header names and values so far
        self._header_count = 0
        self._refusal: tuple[int, str, str] | None = None  # why the parser stopped: status,
        # detail, reason (the label of catdog_http_refusals_total)
        self._last_body = 0.0  # loop time of the latest body bytes
        self._waiting_since = 0.0  # loop time it became idle or started a request
        self._over_cap = False

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._header_timed_out
        )
        if len(self.connections) > self.limits.max_connections:
            self._make_room()
        if self._over_cap:  # answered at its first request, or closed if it sends none
            self._count("connection_cap")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)  # headers still incomplete after this chunk
            if self._header_bytes > self.limits.max_header_bytes:
                self._refusal = (
                    431,
                    f"request headers exceed {self.limits.max_header_bytes} bytes",
                    "header_bytes",
                )
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        """The parser stopped: malformed, or over a header bound (JSON, not uvicorn's text)."""
        status, detail, reason = self._refusal or (
            400,
            f"malformed HTTP request: {msg}",
            "malformed",
        )
        self._answer(status, detail, reason)

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._header_size = self._header_count = 0
        self._waiting_since = self.loop.time()
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timed_out
            )

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        self._check_header_size()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_size += len(name) + len(value) + 4
        self._check_header_size()
        if self._header_count > self.limits.max_header_count:
            count = self.limits.max_header_count
            self._refusal = (431, f"more than {count} request headers", "header_count")
            raise _HeaderLimit
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._last_body = self.loop.time()
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_check)
        self.app = self._app_for_request()
        super().on_headers_complete()

    def _app_for_request(self) -> Any:
        """The app, or a cheap refusal: past the connection cap, or a prediction when full."""
        if self._over_cap:
            return too_many_connections
        if self.parser.get_method() == b"POST" and not self.service.has_room():
            path = httptools.parse_url(self.url).path.decode("latin-1")
            if body_limit(self.service.settings, unquote(path)) is not None:
                try:
                    self.service.refuse_if_full()  # counts the rejection
                except QueueFullError as exc:
                    return HeldRefusal(self.service, exc)
        return self._served_app

    def on_body(self, body: bytes) -> None:
        self._last_body = self.loop.time()
        super().on_body(body)

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()  # idle from now on, for the connection cap
        super().on_response_complete()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # ------------------------------------------------------------ bounds and timeouts

    def _check_header_size(self) -> None:
        if self._header_size > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            self._refusal = (431, f"request headers exceed {limit} bytes", "header_bytes")
            raise _HeaderLimit

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            timeout = self.limits.header_timeout_s
            self._answer(
                408, f"request headers not received within {timeout:g} s", "header_timeout"
            )
        elif self.cycle is None or self.cycle.response_complete:
            if not self._over_cap:  # counted once, as connection_cap
                self._count("idle")
            self.transport.close()  # opened, nothing sent: closed without a word

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        timeout = self.limits.body_timeout_s
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading: not the client's pause
            self._last_body = now
        remaining = self._last_body + timeout - now
        if remaining > 0:
            self._body_timer = self.loop.call_later(remaining, self._body_check)
            return
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()  # answered already (an early 413 or 503): stop discarding
            return
        cycle.scope[TIMED_OUT_KEY] = True  # type: ignore[literal-required]
        cycle.disconnected = True  # the app sees its client leave; its answer is dropped
        cycle.message_event.set()
        detail = f"request body not received in time: nothing for {timeout:g} s"
        self._answer(408, detail, "body_timeout")  # and the app counts a 408 for its route

    def _answer(self, status: int, detail: str, reason: str) -> None:
        """Write a JSON answer and close (the client's unsent bytes are not waited for)."""
        if not self.transport.is_closing():
            default = self.server_state.default_headers
            self.transport.write(json_answer(status, detail, default))
            self.transport.close()
            self._count(reason)

    def _count(self, reason: str) -> None:
        self.service.metrics.http_refusals.labels(reason=reason).inc()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    # ------------------------------------------------------------ the connection cap

    def _waiting(self) -> bool:
        """Open and not being answered: idle between requests, or still sending headers."""
        idle = self.cycle is None or self.cycle.response_complete
        return idle and not self.pipeline and not self.transport.is_closing()

    def _make_room(self) -> None:
        waiting = [
            c
            for c in self.connections
            if c is not self and isinstance(c, GuardedProtocol) and c._waiting()
        ]
        if not waiting:
            self._over_cap = True  # everyone is being answered: this one is refused
            log.warning("%d connections, all busy: refusing a new one", len(self.connections))
            return
        oldest = min(waiting, key=lambda c: c._waiting_since)
        if oldest._in_headers:
            detail = "too many connections: this one was waiting the longest"
            oldest._answer(503, detail, "connection_cap")
        else:
            oldest._count("closed_for_room")
            oldest.transport.close()


def protocol_for(service: InferenceService) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` subclass for ``service``, with the limits its settings name."""
    limits = Limits.from_settings(service.settings)
    return type("CatdogProtocol", (GuardedProtocol,), {"limits": limits, "service": service})
