"""REST side of the operations layer: one ASGI middleware, outermost in the app.

For every HTTP request it

* takes the client's ``x-request-id`` (up to 128 of ``[A-Za-z0-9._:-]``) or makes
  one, follows the request under it (``app.core.observe.CURRENT``) and returns it
  in the ``x-request-id`` header (the error handlers, ``app.core.errors.respond``,
  put it in every error body);
* with API keys on (``CATDOG_API_KEYS_FILE``), refuses a prediction or model
  metadata request without an accepted ``Authorization: Bearer <key>``: 401, JSON
  in the path's protocol shape, ``WWW-Authenticate: Bearer``. Health, readiness,
  ``/metrics``, the page and the API docs stay open;
* with ``CATDOG_LOG_FORMAT=json``, writes the request's access line.

A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: the latter runs
the app in another task, and the request's context variables would not reach it.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import error_shape
from app.core.metrics import Metrics
from app.core.observe import CURRENT, RequestContext
from app.ops import logs
from app.ops.keys import ApiKeys, bearer

HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Paths that never need a key: probes, metrics, the page, the API docs, OIP health.
OPEN = re.compile(
    r"^/(|healthz|readyz|metrics|docs|docs/oauth2-redirect|redoc|openapi\.json|favicon\.ico)$"
    r"|^/v2/health/(live|ready)$|^/v2/models/[^/]+(/versions/[^/]+)?/ready$"
)


def request_id(presented: str | None) -> str:
    """The client's id when it is a sane one, else a new one."""
    if presented and _VALID_ID.match(presented):
        return presented
    return uuid.uuid4().hex


def error_body(path: str, message: str, rid: str) -> bytes:
    """A refusal in the shape of the path's protocol (``app.core.errors.error_shape``)."""
    shape = error_shape(path)
    if shape == "oip":
        body: dict[str, object] = {"error": message}
    elif shape == "tfserving":
        body = {"error": message, "detail": message}
    else:
        body = {"detail": message}
    body["request_id"] = rid
    return json.dumps(body).encode()


class OpsMiddleware:
    """Request ids, API keys and access lines (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, keys: ApiKeys | None, access_log: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = keys
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        presented_id = auth = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                presented_id = value.decode("latin-1")
            elif name == b"authorization":
                auth = value.decode("latin-1")
        rid = request_id(presented_id)
        path = scope["path"]
        context = RequestContext(rid, "rest", path)
        token = CURRENT.set(context)
        status: list[int] = [0]
        try:
            if self.keys is not None and not OPEN.match(path):
                key = self.keys.check(bearer(auth))
                if key is None:
                    status[0] = 401
                    await self._refuse(path, rid, auth is not None, send)
                    return
                context.key_id = key
                self.metrics.key_requests.labels(key_id=key).inc()
            await self.app(scope, receive, self._sender(send, rid, status))
        finally:
            if self.access_log:
                route = getattr(scope.get("route"), "path", None) or path
                context.route = route
                logs.access(context, scope["method"], status[0], time.perf_counter() - started)
            CURRENT.reset(token)

    async def _refuse(self, path: str, rid: str, presented: bool, send: Send) -> None:
        reason = "invalid" if presented else "missing"
        self.metrics.auth_refused.labels(reason=reason).inc()
        message = (
            "invalid API key" if presented else "missing API key: send Authorization: Bearer <key>"
        )
        challenge = b'Bearer realm="catdog"' + (b', error="invalid_token"' if presented else b"")
        body = error_body(path, message, rid)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge),
            (HEADER.encode(), rid.encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _sender(send: Send, rid: str, status: list[int]) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return sending
