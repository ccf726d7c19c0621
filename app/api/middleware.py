"""ASGI middleware: request-body limits, load shedding before the upload is read, metrics."""

from __future__ import annotations

import time

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import queue_full
from app.core.config import Settings, settings_of
from app.core.errors import QueueFullError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
ROUTE_KEY = "catdog.route"  # route label for answers sent before routing


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` as soon as the body passes its limit (FastAPI renders it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


def body_limit(settings: Settings, path: str) -> int | None:
    """The largest body accepted on ``path`` (None: no limit)."""
    if path == "/predict":
        return settings.max_upload_bytes + MULTIPART_OVERHEAD
    if path == "/predict/batch":
        return settings.max_upload_bytes * settings.files_per_request + MULTIPART_OVERHEAD
    return None


class BodyLimitMiddleware:
    """Refuse bodies over the limit from Content-Length, or mid-stream while counting."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(settings_of(scope.get("app")), scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        scope[ROUTE_KEY] = scope["path"]  # limits exist only on exact route paths
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # No "Connection: close": uvicorn would close the socket with the body unread and
            # a client still sending it would get a reset instead of this 413. Kept open, the
            # server discards the rest of the body.
            response = JSONResponse({"detail": BodyTooLarge(limit).detail}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


class LoadSheddingMiddleware:
    """Answer 503 before reading an upload when the batch queue is already full.

    Refused uploads are never parsed, so a crowd of retrying clients costs the
    service little; a request that passes here can still get 503 from the same
    check after parsing if the queue filled meanwhile.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batcher = getattr(getattr(scope.get("app"), "state", None), "batcher", None)
        predicting = (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and body_limit(settings_of(scope.get("app")), scope["path"]) is not None
        )
        if predicting and batcher is not None:
            try:
                batcher.check_room()
            except QueueFullError as exc:
                scope[ROUTE_KEY] = scope["path"]
                response = await queue_full(Request(scope), exc)
                await response(scope, receive, send)
                return
            with batcher.expect():  # the batcher may wait for this upload to join a batch
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Count requests by route template and status; time them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = getattr(scope.get("app").state, "metrics", None) if scope.get("app") else None
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_KEY, "unmatched")
            metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            metrics.latency.labels(route=route).observe(time.perf_counter() - started)
