"""REST side of the operations layer: one ASGI middleware, outermost in the app.

For every HTTP request it

* takes the client's ``x-request-id`` (up to 128 of ``[A-Za-z0-9._:-]``) or makes
  one, puts the ``RequestContext`` in the scope (``app.core.observe.REQUEST_KEY``:
  the error answers, ``app.core.errors.respond``, put its id in every error body, and
  the gate hands it to the service) and returns the id in the ``x-request-id`` header;
* with API keys on (``CATDOG_API_KEYS_FILE``), refuses a prediction or model
  metadata request without an accepted ``Authorization: Bearer <key>``: 401, JSON
  in the path's protocol shape, ``WWW-Authenticate: Bearer``. Health, readiness,
  ``/metrics``, the page and the API docs stay open;
* with ``CATDOG_LOG_FORMAT=json``, writes the request's access line.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ErrorAnswer, respond
from app.core.observe import REQUEST_KEY, RequestContext
from app.ops import logs
from app.ops.keys import ApiKeys, Refused

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


def refusal(refused: Refused) -> ErrorAnswer:
    """The 401 for a request without an accepted key."""
    challenge = 'Bearer realm="catdog"' + (', error="invalid_token"' if refused.presented else "")
    return ErrorAnswer(401, str(refused), {"WWW-Authenticate": challenge})


class OpsMiddleware:
    """Request ids, API keys and access lines (see the module docstring)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys | None, access_log: bool) -> None:
        self.app = app
        self.keys = keys
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        context = RequestContext(request_id(headers.get(HEADER)), "rest", scope["path"])
        scope[REQUEST_KEY] = context
        marked = (HEADER.encode(), context.request_id.encode())
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                kept = [(k, v) for k, v in message.get("headers", []) if k != marked[0]]
                message = {**message, "headers": [*kept, marked]}
            await send(message)

        try:
            if self.keys is not None and not OPEN.match(scope["path"]):
                try:
                    key = self.keys.authenticate(headers.get("authorization"))
                except Refused as refused:
                    await respond(Request(scope), refusal(refused))(scope, receive, sending)
                    return
                context.key_id = key
            await self.app(scope, receive, sending)
        finally:
            if self.access_log:
                context.route = getattr(scope.get("route"), "path", None) or context.route
                logs.access(context, scope["method"], status, time.perf_counter() - started)
