"""Map service and input errors to clean JSON answers ``{"detail": ...}``.

A client that left before its answer (``ClientDisconnect`` while its body was
read) gets nothing: the answer is a bodiless 499 that the server drops and the
metrics count, or 408 when the server's body timeout cut it off
(``TIMED_OUT_KEY`` in its scope, set by ``app.protocol``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app.core.config import Settings
from app.core.errors import (
    InvalidInputError,
    ModelNotReadyError,
    QueueFullError,
    VersionNotFoundError,
)
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


@dataclass(frozen=True)
class ErrorAnswer:
    """What a client is told about an error: the HTTP status, ``detail`` and headers."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


def answer_for(exc: Exception, settings: Settings) -> ErrorAnswer | None:
    """The answer to an error of the input or of the service's state, whatever the API
    (REST here, gRPC in ``app.api.grpc_server``); None for a fault of the service (500)."""
    if isinstance(exc, HTTPException):
        return ErrorAnswer(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, ImageError):
        status = next((s for cls, s in IMAGE_ERROR_STATUS.items() if isinstance(exc, cls)), 422)
        return ErrorAnswer(status, exc.reason)
    if isinstance(exc, QueueFullError):  # shed load, and say when to retry
        retry = {"Retry-After": str(settings.retry_after_s)}
        return ErrorAnswer(503, f"server busy: {exc}; retry shortly", retry)
    if isinstance(exc, ModelNotReadyError):  # starting up or shutting down
        return ErrorAnswer(503, f"model not ready: {exc}", {"Retry-After": "1"})
    if isinstance(exc, VersionNotFoundError):
        return ErrorAnswer(404, str(exc))
    if isinstance(exc, InvalidInputError):
        return ErrorAnswer(400, str(exc))
    return None


def fault_answer(exc: Exception) -> ErrorAnswer:
    """The 500 for a fault of the service: its type only, nothing of its internals."""
    return ErrorAnswer(500, f"internal error ({type(exc).__name__})")


async def known_error(request: Request, exc: Exception) -> JSONResponse:
    """A file that is not a usable image, too much work in flight, no model loaded."""
    answer = answer_for(exc, request.app.state.service.settings)
    assert answer is not None
    return JSONResponse({"detail": answer.detail}, answer.status, answer.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A fault of the service (not of the input): JSON as well; uvicorn logs the traceback."""
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"detail": fault_answer(exc).detail}, status_code=500)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left while its body was read: nothing to answer (the metrics count it)."""
    return Response(status_code=408 if request.scope.get(TIMED_OUT_KEY) else CLIENT_GONE)


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers above."""
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    for error in (ImageError, QueueFullError, ModelNotReadyError):
        app.add_exception_handler(error, known_error)
