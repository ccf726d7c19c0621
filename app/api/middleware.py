"""ASGI middleware: a gate in front of the prediction routes, and request metrics.

The gate runs before an upload is read: it refuses a body over its limit (from
Content-Length, or mid-stream while counting), refuses with 503 when no image
would be admitted (refused uploads are never parsed, and the 503 is held for
``busy_hold_s`` so that a client retrying at once cannot spin: a crowd of them
costs a few refusals a second each instead of thousands), and opens the
request's ``Upload`` so the batcher knows it is on its way; the route hands it to
``InferenceService.classify``. Once the body has been read it watches for the
client to leave (ASGI ``http.disconnect``) and then cancels the request wherever
it is: a decode not yet started is dropped, a queued image's future is
cancelled (the batcher skips it), its room is released at once; it counts as 499.

The metrics middleware counts every request by route and status, and answers a
request the server cut off before its answer started (uvicorn's graceful-shutdown
timeout cancels it) with a JSON 503 instead of uvicorn's text/plain 500.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import UPLOAD_KEY
from app.api.errors import ErrorAnswer, known_error, respond
from app.api.gate import admitted, body_limit, client_key, route_label
from app.core.errors import QueueFullError
from app.core.service import InferenceService
from app.protocols.common import header_int

log = logging.getLogger("catdog")
ROUTE_KEY = "catdog.route"  # route label for answers sent before routing
LEFT_KEY = "catdog.client_left"  # scope key: the client left before its answer (499)
CLIENT_LEFT = 499


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` as soon as the body passes its limit (FastAPI renders it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class PredictionGateMiddleware:
    """Body limit, early 503, and the upload's arrival, for POSTs to prediction paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or b""
        if b"%2f" in raw.lower():  # decoded, it would split a path parameter in two
            detail = "an encoded '/' (%2F) in the path is not accepted"
            await respond(Request(scope), ErrorAnswer(400, detail))(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        service: InferenceService = scope["app"].state.service
        limit = body_limit(service.settings, scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = route_label(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        length = None if declared is None else header_int(declared)
        if length is not None and length > limit:
            # No "Connection: close": uvicorn would close the socket with the body unread and
            # a client still sending it would get a reset instead of this 413. Kept open, the
            # server discards the rest of the body.
            response = respond(Request(scope), ErrorAnswer(413, BodyTooLarge(limit).detail))
            await response(scope, receive, send)
            return
        client = client_key(scope["client"][0]) if scope.get("client") else None
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            async with admitted(service, client, limit if length is None else length) as upload:
                scope[UPLOAD_KEY] = upload
                await call_until_client_leaves(self.app, scope, counting_receive, send)
        except QueueFullError as exc:
            if UPLOAD_KEY in scope:
                raise  # refused later, by the service: the app answered it
            response = await known_error(Request(scope), exc)
            await response(scope, receive, send)


async def call_until_client_leaves(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run ``app``; once it has read the whole body, cancel it if the client disconnects.

    After the body, only a watcher task calls ``receive`` (its next message is
    ``http.disconnect``: the client left, or the answer was sent); a later call by
    the app gets that same message.
    """
    watcher: asyncio.Task[Message] | None = None
    answered = False

    async def watch() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect" and not answered:
            scope[LEFT_KEY] = True
            task.cancel()
        return message

    async def app_receive() -> Message:
        nonlocal watcher
        if watcher is not None:
            return await asyncio.shield(watcher)
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            watcher = asyncio.ensure_future(watch())
        return message

    async def app_send(message: Message) -> None:
        nonlocal answered
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered = True
        await send(message)

    task = asyncio.ensure_future(app(scope, app_receive, app_send))
    try:
        await task
    except asyncio.CancelledError:
        if not (scope.get(LEFT_KEY) and task.cancelled()):
            raise  # this request itself is cancelled (shutdown), not dropped for its client
    finally:
        if watcher is not None:
            watcher.cancel()


class MetricsMiddleware:
    """Count requests by route template and status; time them; answer a cut-off one in JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = scope["app"].state.service.metrics
        status: int | None = None  # of the answer, once it started
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except asyncio.CancelledError:
            if status is not None:
                raise
            # Cut off by the server (uvicorn's graceful-shutdown timeout) before its answer
            # started: uvicorn would send a text/plain 500. The task ends here either way.
            log.warning("cut off at shutdown: %s %s", scope["method"], scope["path"])
            detail = "server shutting down: the request was cut off; retry"
            headers = {"Retry-After": "1", "Connection": "close"}
            response = respond(Request(scope), ErrorAnswer(503, detail, headers))
            await response(scope, receive, recording_send)
        finally:
            if status is None:  # nothing sent: the client had left, or the app failed
                status = CLIENT_LEFT if scope.get(LEFT_KEY) else 500
            route = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_KEY, "unmatched")
            metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            metrics.latency.labels(route=route).observe(time.perf_counter() - started)
