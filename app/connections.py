"""Client bounds at the connection, around the HTTP protocol uvicorn builds.

uvicorn has no header-read or body-pause timeout, no header byte bound with httptools
and no connection cap that evicts idle connections. :func:`bounded_protocol` makes the
class for its documented ``http=`` setting: an ``asyncio.Protocol`` that builds uvicorn's
own protocol through its constructor and stands between it and the socket, reading the
arriving bytes with its own ``httptools`` parser (~11 µs a request,
``bench/results/edge.md``). docs/service.md's hardening table lists each bound, its
``CATDOG_*`` setting and its answer: JSON ``{"detail": ...}`` with ``Connection: close``,
counted by reason in ``catdog_http_refusals_total`` (as are connections closed without
one). A body cut off by its timeout also counts as 408 for its route (``TIMED_OUT_KEY``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
import uvicorn
from starlette.responses import JSONResponse
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from app.core.config import Settings
from app.core.errors import TIMED_OUT_KEY

log = logging.getLogger("catdog.server")
MOST_CHUNKS = 256  # chunks any body may hold, plus one per CHUNK_BYTES
CHUNK_BYTES = 1024
MOST_UNREAD_BYTES = 8 * 1024 * 1024  # discarded after an answer, then the connection closes
LINE_BYTES = 32  # a chunk's size line and CRLFs; beyond them and max_header_bytes of trailers
# and extensions, 400 (httptools builds a trailer in memory: a 60 MB one held others 4 s)


def json_answer(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 answer ``{"detail": detail}`` that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    phrase = HTTPStatus(status).phrase.encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, phrase, len(body))
    )
    return head + body


class _Refused(Exception):
    """Raised in a parser callback: the request breaks a bound (status, detail, reason)."""


class BoundedConnection(asyncio.Protocol):
    """One client connection: uvicorn's protocol inside, the module's bounds around it."""

    bounds: ClassVar[Settings]  # set on the class bounded_protocol makes
    inner_class: ClassVar[type[asyncio.Protocol]]
    count: ClassVar[Callable[[str], None]]  # counts a refusal by reason
    open: ClassVar[set[BoundedConnection]]

    def __init__(self, config: uvicorn.Config, **kwargs: Any) -> None:
        self.app = config.loaded_app
        config = copy.copy(config)
        config.loaded_app = self._serve
        self.inner = self.inner_class(config=config, **kwargs)  # type: ignore[call-arg]
        self.loop = asyncio.get_event_loop() if kwargs.get("_loop") is None else kwargs["_loop"]
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_headers = self.over_cap = False
        self.header_bytes = self.header_size = self.header_count = 0
        self.body_bytes = self.chunks = self.unread = self.framing = 0
        self.requests = self.answered = 0  # requests whose headers arrived; answers sent
        self.last_body = self.waiting_since = 0.0
        self.scope: dict[str, Any] | None = None  # of the request being answered
        self.responded = False  # the current request's answer has started

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.waiting_since = self.loop.time()
        self.timer = self.loop.call_later(self.bounds.header_timeout_s, self._header_timed_out)
        self.open.add(self)
        self.inner.connection_made(transport)
        if len(self.open) > self.bounds.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)
        self._cancel_timer()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if self.parser is not None:
            requests, body_bytes = self.requests, self.body_bytes
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.parser = None  # an upgrade: uvicorn's protocol answers it
            except httptools.HttpParserError as exc:
                self._refuse(exc)
                return
            if self.in_headers:
                self.header_bytes += len(data)  # headers still incomplete after this chunk
                if self.header_bytes > self.bounds.max_header_bytes:
                    limit = self.bounds.max_header_bytes
                    self._answer(431, f"request headers exceed {limit} bytes", "header_bytes")
                    return
            elif self.requests == requests:  # in one body: its chunk lines and trailers
                self.framing += len(data) - (self.body_bytes - body_bytes)
                most = self.bounds.max_header_bytes + LINE_BYTES * self.chunks
                if self.framing > most:
                    detail = f"chunk size lines and trailers exceed {most} bytes"
                    self._answer(400, detail, "chunks")
                    return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.in_headers = True
        self.header_bytes = self.header_size = self.header_count = 0
        self.body_bytes = self.chunks = self.unread = self.framing = 0
        self.responded = False
        self.waiting_since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_later(self.bounds.header_timeout_s, self._header_timed_out)

    def on_url(self, url: bytes) -> None:
        self._add_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self._add_header_bytes(len(name) + len(value) + 4)
        if self.header_count > self.bounds.max_header_count:
            count = self.bounds.max_header_count
            raise _Refused(431, f"more than {count} request headers", "header_count")
        if name.lower() == b"transfer-encoding" and value.strip().lower() != b"chunked":
            shown = value[:64].decode("latin-1")
            detail = f"Transfer-Encoding {shown!r} is not supported: send chunked, or a length"
            raise _Refused(400, detail, "malformed")

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.requests += 1
        self._cancel_timer()
        self.last_body = self.loop.time()
        self.timer = self.loop.call_later(self.bounds.body_timeout_s, self._body_check)

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.chunks > MOST_CHUNKS + self.body_bytes // CHUNK_BYTES:
            raise _Refused(
                400,
                f"{self.chunks} chunks for {self.body_bytes} bytes of body: send chunks of "
                f"{CHUNK_BYTES} bytes or more",
                "chunks",
            )

    def on_body(self, body: bytes) -> None:
        self.last_body = self.loop.time()
        self.body_bytes += len(body)
        if self.answered == self.requests:  # answered already: discarded
            self.unread += len(body)
            if self.unread > MOST_UNREAD_BYTES:
                raise _Refused(0, "", "unread")

    def on_message_complete(self) -> None:
        self._cancel_timer()

    # ------------------------------------------------------------ each request's ASGI call

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, or a 503 on a connection past the cap; notes when it answered."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.scope = scope

        async def noting_send(message: Any) -> None:
            self.responded = True
            await send(message)

        try:
            if self.over_cap:  # every other connection is busy: this one is refused
                detail = {"detail": "too many connections; retry shortly"}
                headers = {"Retry-After": "1", "Connection": "close"}
                await JSONResponse(detail, 503, headers)(scope, receive, noting_send)
            else:
                await self.app(scope, receive, noting_send)
        finally:
            self.scope = None
            self.answered += 1
            self.waiting_since = self.loop.time()

    # ------------------------------------------------------------ bounds

    def _add_header_bytes(self, size: int) -> None:
        self.header_size += size
        if self.header_size > self.bounds.max_header_bytes:
            limit = self.bounds.max_header_bytes
            raise _Refused(431, f"request headers exceed {limit} bytes", "header_bytes")

    def _header_timed_out(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.in_headers:
            timeout = self.bounds.header_timeout_s
            detail = f"request headers not received within {timeout:g} s"
            self._answer(408, detail, "header_timeout")
        elif self.requests == self.answered:  # opened, nothing sent: closed without a word
            if not self.over_cap:  # counted once, as connection_cap
                self.count("idle")
            self.transport.close()

    def _body_check(self) -> None:
        self.timer = None
        assert self.transport is not None
        if self.transport.is_closing():
            return
        timeout = self.bounds.body_timeout_s
        now = self.loop.time()
        if not self.transport.is_reading():  # uvicorn paused it: the app is not reading
            self.last_body = now
        remaining = self.last_body + timeout - now
        if remaining > 0:
            self.timer = self.loop.call_later(remaining, self._body_check)
            return
        if self.scope is None:  # answered already (an early 413 or 503): stop discarding
            self.count("body_timeout")
            self.transport.close()
            return
        self.scope[TIMED_OUT_KEY] = True  # the app counts a 408 for its route
        detail = f"request body not received in time: nothing for {timeout:g} s"
        self._answer(408, detail, "body_timeout")

    def _refuse(self, error: httptools.HttpParserError) -> None:
        """Answer a request the parser gave up on. httptools raises its own error for a
        ``_Refused`` raised in a callback. Kept out of ``data_received``: a ``_Refused``
        held in a local there makes a cycle through its traceback with that frame and
        its chunk of the request, ~100-400 KB a refused request waiting for the
        collector."""
        refused = error if isinstance(error, _Refused) else error.__context__
        if isinstance(refused, _Refused):
            self._answer(*refused.args)
        else:
            self._answer(400, f"malformed HTTP request: {error}", "malformed")

    def _answer(self, status: int, detail: str, reason: str) -> None:
        """Write a JSON answer (none for status 0, or once the app's answer started), close."""
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if status and not self.responded:
            self.transport.write(json_answer(status, detail))
        self.transport.close()
        self.count(reason)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _waiting(self) -> bool:
        """Open and not being answered: idle between requests, or still sending headers."""
        assert self.transport is not None
        return self.requests == self.answered and not self.transport.is_closing()

    def _make_room(self) -> None:
        waiting = [c for c in self.open if c is not self and c._waiting()]
        if not waiting:
            self.over_cap = True  # everyone is being answered: this one is refused
            self.count("connection_cap")
            log.warning("%d connections, all busy: refusing a new one", len(self.open))
            return
        oldest = min(waiting, key=lambda c: c.waiting_since)
        if oldest.in_headers:
            detail = "too many connections: this one was waiting the longest"
            oldest._answer(503, detail, "connection_cap")
        else:
            assert oldest.transport is not None
            oldest.count("closed_for_room")
            oldest.transport.close()


def bounded_protocol(
    settings: Settings, count: Callable[[str], None], http: str = "httptools"
) -> type[BoundedConnection]:
    """The ``http=`` class for uvicorn: its ``http`` protocol (``httptools``, ``h11``)
    inside :class:`BoundedConnection`, with the bounds ``settings`` name; ``count(reason)``
    counts each refusal."""
    inner = import_from_string(HTTP_PROTOCOLS[http])
    attributes = {
        "bounds": settings,
        "inner_class": inner,
        "count": staticmethod(count),
        "open": set(),
    }
    return type("CatdogConnection", (BoundedConnection,), attributes)
