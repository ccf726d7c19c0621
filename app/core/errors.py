"""Every error of the service and its answer, for REST and gRPC alike.

``answer_for`` maps the exceptions below (and image errors) to a status, a ``detail``
and headers; ``respond`` writes it in the shape of the path's protocol
(docs/protocols.md), ``status_of`` as a gRPC status. Text that may echo the client's
input is cut to ``MOST_ECHO`` characters. A client that left while its body was read
gets a bodiless 499 that only the metrics see, or 408 when the body timeout cut it off
(``TIMED_OUT_KEY``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.core.config import Settings
from app.core.observe import request_of
from catdog.preprocessing import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
)

log = logging.getLogger("catdog.errors")
TIMED_OUT_KEY = "catdog.timed_out"  # scope key: the body timeout cut this request off (408)
CLIENT_GONE = 499  # nginx's "client closed request": never sent, only counted
MOST_ECHO = 512  # characters of an error message: it may quote the client's input
IMAGE_ERROR_STATUS = {
    NotAnImageError: 415,  # Unsupported Media Type
    CorruptImageError: 422,  # Unprocessable Content
    ImageTooLargeError: 413,  # Content Too Large
}
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,  # the message did not arrive in time
    413: grpc.StatusCode.INVALID_ARGUMENT,  # too large whatever the load: retrying won't help
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
HTTP_STATUS = "catdog-http-status"  # gRPC trailing metadata: the status REST would answer
Trailers = tuple[tuple[str, str], ...]


class QueueFullError(RuntimeError):
    """No room for the request now (``app.core.gate``): shed load with a 503."""


class Unauthenticated(PermissionError):
    """A call without an accepted API key (``presented``: it named one, a wrong one)."""

    def __init__(self, presented: bool) -> None:
        self.presented = presented
        super().__init__(
            "invalid API key"
            if presented
            else "missing API key: send authorization: Bearer <key> (a header; gRPC: metadata)"
        )


class ModelNotReadyError(RuntimeError):
    """No model is loaded (startup not finished, or shutting down)."""


class ModelLoadError(RuntimeError):
    """A model folder cannot be served; the message names the path and the problem."""


class VersionNotFoundError(LookupError):
    """A request named a model version that is not loaded (unknown, refused, or not kept)."""


class InvalidInputError(ValueError):
    """A request's tensor does not fit the model contract (shape, dtype or value range)."""


@dataclass(frozen=True)
class ErrorAnswer:
    """What a client is told about an error: the HTTP status, ``detail`` and headers."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


def cut(message: str) -> str:
    """``message``, at most ``MOST_ECHO`` characters (the last one an ellipsis if cut)."""
    return message if len(message) <= MOST_ECHO else message[: MOST_ECHO - 1] + "…"


def answer_for(exc: Exception, settings: Settings) -> ErrorAnswer | None:
    """The answer to an error of the input or of the service's state, whatever the API
    (REST here, gRPC in ``app.api.grpc_server``); None for a fault of the service (500)."""
    if isinstance(exc, StarletteHTTPException):
        return ErrorAnswer(exc.status_code, cut(str(exc.detail)), dict(exc.headers or {}))
    if isinstance(exc, Unauthenticated):
        challenge = 'Bearer realm="catdog"' + (', error="invalid_token"' if exc.presented else "")
        return ErrorAnswer(401, str(exc), {"WWW-Authenticate": challenge})
    if isinstance(exc, ImageError):
        status = next((s for cls, s in IMAGE_ERROR_STATUS.items() if isinstance(exc, cls)), 422)
        return ErrorAnswer(status, cut(exc.reason))
    if isinstance(exc, QueueFullError):  # shed load, and say when to retry
        retry = {"Retry-After": str(settings.retry_after_s)}
        return ErrorAnswer(503, f"server busy: {exc}; retry shortly", retry)
    if isinstance(exc, ModelNotReadyError):  # starting up or shutting down
        return ErrorAnswer(503, f"model not ready: {exc}", {"Retry-After": "1"})
    if isinstance(exc, VersionNotFoundError):
        return ErrorAnswer(404, cut(str(exc)))
    if isinstance(exc, InvalidInputError):
        return ErrorAnswer(400, cut(str(exc)))
    return None


def fault_answer(exc: Exception) -> ErrorAnswer:
    """The 500 for a fault of the service: its type only, nothing of its internals."""
    return ErrorAnswer(500, f"internal error ({type(exc).__name__})")


def status_of(
    exc: Exception, settings: Settings, path: str
) -> tuple[grpc.StatusCode, str, Trailers]:
    """A gRPC call's error as its status code, message and trailing metadata: the REST
    answer's (``answer_for``; ``HTTP_STATUS`` tells 413 from 415), a fault as a 500
    (logged)."""
    found = answer_for(exc, settings)
    if found is None:
        log.exception("%s failed", path)
        found = fault_answer(exc)
    trailers: Trailers = ((HTTP_STATUS, str(found.status)),)
    if "Retry-After" in found.headers:
        trailers += (("retry-after", found.headers["Retry-After"]),)
    return GRPC_CODES.get(found.status, grpc.StatusCode.UNKNOWN), found.detail, trailers


def respond(request: Request, answer: ErrorAnswer, detail: object = None) -> JSONResponse:
    """``answer`` in the shape of the request's protocol: ``{"detail": ...}``, ``{"error":
    ...}`` under ``/v2``, both under ``/v1/models/`` (``detail``: the service's and TF
    Serving's ``detail``, when it is more than the message)."""
    path = request.url.path
    body: dict[str, object] = {"detail": answer.detail if detail is None else detail}
    if path == "/v2" or path.startswith("/v2/"):
        body = {"error": answer.detail}
    elif path.startswith("/v1/models/"):
        body = {"error": answer.detail, **body}
    headers = answer.headers
    context = request_of(request.scope)  # the request app.ops follows: its id goes with it
    if context is not None:  # (a 500 is sent from outside app.ops's middleware: header too)
        body["request_id"] = context.request_id
        headers = {**headers, "x-request-id": context.request_id}
    return JSONResponse(body, answer.status, headers)


async def known_error(request: Request, exc: Exception) -> Response:
    """An error of the input or of the service's state (``answer_for``)."""
    answer = answer_for(exc, request.app.state.service.settings)
    if answer is None:
        return await internal_error(request, exc)
    return respond(request, answer)


async def invalid_request(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 for a request its schema refuses: each problem's place and message,
    not the input pydantic quotes."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": list(e.get("loc", ())), "msg": cut(str(e.get("msg", ""))), "type": e.get("type")}
        for e in exc.errors()[:8]
    ]
    text = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
    return respond(request, ErrorAnswer(422, cut(text)), problems)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A fault of the service (not of the input): JSON as well; uvicorn logs the traceback."""
    context = request_of(request.scope)
    rid = {"request_id": context.request_id} if context else None
    log.error(
        "%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc, extra=rid
    )
    return respond(request, fault_answer(exc))


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left while its body was read: nothing to answer (the metrics count it)."""
    return Response(status_code=408 if request.scope.get(TIMED_OUT_KEY) else CLIENT_GONE)


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers above."""
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(RequestValidationError, invalid_request)
    known = (StarletteHTTPException, HTTPException, ImageError, QueueFullError)
    for error in (*known, ModelNotReadyError, VersionNotFoundError, InvalidInputError):
        app.add_exception_handler(error, known_error)
