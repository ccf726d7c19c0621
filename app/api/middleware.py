"""ASGI middleware: a gate in front of the prediction routes, and request metrics.

The gate runs before an upload is read: it refuses a body over its limit (from
Content-Length, or mid-stream while counting), refuses with 503 when no image
would be admitted (a crowd of retrying clients then costs little: refused uploads
are never parsed), and opens the request's ``Upload`` so the batcher knows it is
on its way; the route hands it to ``InferenceService.classify``.
"""

from __future__ import annotations

import time

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import UPLOAD_KEY
from app.api.errors import queue_full
from app.core.config import Settings
from app.core.errors import QueueFullError
from app.core.service import InferenceService

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
ROUTE_KEY = "catdog.route"  # route label for answers sent before routing


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` as soon as the body passes its limit (FastAPI renders it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


def body_limit(settings: Settings, path: str) -> int | None:
    """The largest body accepted on a prediction path (None: not a prediction path)."""
    if path == "/predict":
        return settings.max_upload_bytes + MULTIPART_OVERHEAD
    if path == "/predict/batch":
        return settings.max_upload_bytes * settings.max_files_per_request + MULTIPART_OVERHEAD
    if path.startswith(("/v2/models/", "/v1/models/")) and path.endswith(
        ("/infer", ":predict", ":classify")
    ):  # Open Inference Protocol, TF Serving (app/api/protocols): base64 is 4/3 of the bytes
        files = settings.max_upload_bytes * settings.max_files_per_request
        return files * 4 // 3 + MULTIPART_OVERHEAD
    return None


class PredictionGateMiddleware:
    """Body limit, early 503, and the upload's arrival, for POSTs to prediction paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        service: InferenceService = scope["app"].state.service
        limit = body_limit(service.settings, scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = scope["path"]  # limits exist only on exact route paths
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # No "Connection: close": uvicorn would close the socket with the body unread and
            # a client still sending it would get a reset instead of this 413. Kept open, the
            # server discards the rest of the body.
            response = JSONResponse({"detail": BodyTooLarge(limit).detail}, status_code=413)
            await response(scope, receive, send)
            return
        try:
            service.refuse_if_full()
        except QueueFullError as exc:
            response = await queue_full(Request(scope), exc)
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

        with service.uploading() as upload:
            scope[UPLOAD_KEY] = upload
            await self.app(scope, counting_receive, send)


class MetricsMiddleware:
    """Count requests by route template and status; time them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = scope["app"].state.service.metrics
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
