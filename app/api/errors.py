"""Map service and input errors to clean JSON answers ``{"detail": ...}``.

A client that left before its answer (``ClientDisconnect`` while its body was
read) gets nothing: the answer is a bodiless 499 that the server drops and the
metrics count, or 408 when the server's body timeout cut it off
(``TIMED_OUT_KEY`` in its scope, set by ``app.protocol``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app.core.errors import ModelNotReadyError, QueueFullError
from catdog.preprocessing import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
)

log = logging.getLogger("catdog.errors")
TIMED_OUT_KEY = "catdog.timed_out"  # scope key: the server cut this request's body off (408)
CLIENT_GONE = 499  # nginx's "client closed request": never sent, only counted
IMAGE_ERROR_STATUS = {
    NotAnImageError: 415,  # Unsupported Media Type
    CorruptImageError: 422,  # Unprocessable Content
    ImageTooLargeError: 413,  # Content Too Large
}


async def image_error(request: Request, exc: Exception) -> JSONResponse:
    """A file that is not a usable image."""
    assert isinstance(exc, ImageError)
    status = next((s for cls, s in IMAGE_ERROR_STATUS.items() if isinstance(exc, cls)), 422)
    return JSONResponse({"detail": exc.reason}, status_code=status)


async def queue_full(request: Request, exc: Exception) -> JSONResponse:
    """Too much work in flight: shed load and tell the client when to retry."""
    settings = request.app.state.service.settings
    return JSONResponse(
        {"detail": f"server busy: {exc}; retry shortly"},
        status_code=503,
        headers={"Retry-After": str(settings.retry_after_s)},
    )


async def not_ready(request: Request, exc: Exception) -> JSONResponse:
    """No model loaded (starting up or shutting down)."""
    return JSONResponse(
        {"detail": f"model not ready: {exc}"}, status_code=503, headers={"Retry-After": "1"}
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A fault of the service (not of the input): JSON as well; uvicorn logs the traceback."""
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left while its body was read: nothing to answer (the metrics count it)."""
    return Response(status_code=408 if request.scope.get(TIMED_OUT_KEY) else CLIENT_GONE)


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers above."""
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(ImageError, image_error)
    app.add_exception_handler(QueueFullError, queue_full)
    app.add_exception_handler(ModelNotReadyError, not_ready)
