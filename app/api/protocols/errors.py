"""Error answers on the protocol paths, in the protocols' shape ``{"error": "..."}``.

The service's error handlers (``app.api.errors``) and the prediction gate answer
``{"detail": ...}`` with the status and headers of ``/predict`` (413, 415, 422,
503 with Retry-After, ...). On the protocol paths this middleware keeps the status
and the headers and reshapes the body:

* ``/v2`` and below (Open Inference Protocol): ``{"error": "..."}``;
* ``/v1/models/`` and below (TF Serving's REST API, which shares
  ``GET /v1/models/{name}`` with this service's model info): ``{"error": "...",
  "detail": ...}``; TF Serving clients read ``error``, this service's read ``detail``.

It also answers the request-path errors that no handler of the app knows:
``VersionNotFoundError`` 404, ``InvalidInputError`` 400 (by ``app.api.errors.answer_for``,
as gRPC answers them), and any other exception 500 (logged with its traceback), in the
same shapes.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import answer_for, fault_answer

log = logging.getLogger("catdog.protocols")
Shape = Literal["oip", "tfserving"]


def error_shape(path: str) -> Shape | None:
    """Which protocol's error shape answers ``path`` (None: not a protocol path)."""
    if path == "/v2" or path.startswith("/v2/"):
        return "oip"
    if path.startswith("/v1/models/"):
        return "tfserving"
    return None


def error_body(message: str, shape: Shape, detail: object = None) -> dict[str, object]:
    """``{"error": message}``, plus ``detail`` on TF Serving's paths."""
    if shape == "oip":
        return {"error": message}
    return {"error": message, "detail": message if detail is None else detail}


def reshape(body: bytes, shape: Shape) -> bytes:
    """A ``{"detail": ...}`` answer rewritten in the protocol's shape (others unchanged)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or "detail" not in answer or "error" in answer:
        return body
    detail = answer["detail"]
    message = detail if isinstance(detail, str) else _problems(detail)
    return json.dumps(error_body(message, shape, detail)).encode()


def _problems(detail: object) -> str:
    """FastAPI's list of validation errors as one line."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for problem in detail:
        if isinstance(problem, dict):
            where = ".".join(map(str, problem.get("loc", ())))
            parts.append(f"{where}: {problem.get('msg', '')}")
    return "; ".join(parts) or str(detail)


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


class ProtocolErrorMiddleware:
    """Reshape error answers on protocol paths; answer the errors no handler knows."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shape = error_shape(scope["path"]) if scope["type"] == "http" else None
        if shape is None:
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of an error answer, sent with its new body
        chunks: list[bytes] = []
        started = False

        async def reshaping_send(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = reshape(b"".join(chunks), shape)
                await send({**held, "headers": _with_length(held["headers"], len(body))})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, receive, reshaping_send)
        except Exception as exc:
            if started:
                raise
            answer = answer_for(exc, scope["app"].state.service.settings)
            if answer is None:
                log.exception("%s %s failed", scope["method"], scope["path"])
                answer = fault_answer(exc)
            body = error_body(answer.detail, shape)
            response = JSONResponse(body, status_code=answer.status, headers=answer.headers)
            await response(scope, receive, send)
