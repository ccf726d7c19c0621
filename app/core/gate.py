"""The one gate in front of the model, for REST and gRPC alike, and what every request
gets once at the edge: a request id, the API key check, metrics and the access line.

``admitted`` is the gate, passed by every prediction request (``PREDICTIONS``) before
its body is read: ``Admission`` (``app.core.batcher``) must have room for one image of
its client and for its body, else ``QueueFullError`` (503, gRPC UNAVAILABLE), held
``busy_hold_s`` so that clients retrying at once cannot spin. ``GateMiddleware`` is the
app's one ASGI middleware, ``GateInterceptor`` the gRPC server's one interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote

import grpc
from fastapi import Depends, HTTPException, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.batcher import Upload
from app.core.config import Settings
from app.core.errors import CLIENT_GONE, QueueFullError, Unauthenticated, known_error, status_of
from app.core.observe import REQUEST_KEY, RequestContext
from app.ops import logs

if TYPE_CHECKING:
    from app.core.service import InferenceService
    from app.ops.keys import ApiKeys

log = logging.getLogger("catdog")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
UPLOAD_KEY = "catdog.upload"  # scope keys: the request's Upload,
ROUTE_KEY = "catdog.route"  # its route label for answers sent before routing,
LEFT_KEY = "catdog.client_left"  # and whether its client left before its answer (499)
ID_HEADER = "x-request-id"
JSON_LENGTH = "inference-header-content-length"  # OIP: the JSON before binary tensor data
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# What needs no API key: probes, metrics, the page, the API docs, health checks.
OPEN_PATHS = re.compile(
    r"/(|healthz|readyz|metrics|docs|docs/oauth2-redirect|redoc|openapi\.json|favicon\.ico)"
    r"|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready"
)
OPEN_METHODS = re.compile(r"^/grpc\.health\.v1\.Health/|/(ServerLive|ServerReady|ModelReady)$")
# Each {name} and {version} is Starlette's [^/]+ (a ":" included), or a path the router
# serves would pass ungated.
_PROTOCOL = re.compile(
    r"/(?P<api>v1|v2)/models/[^/]+(?P<version>/versions/[^/]+)?(?P<verb>/infer|:predict|:classify)"
)
#: The prediction routes (REST paths, gRPC methods): up to max_files_per_request files
#: (else one)? as base64 text (4/3 of their bytes)?
PREDICTIONS = (
    (re.compile(r"/predict"), False, False),
    (re.compile(r"/predict/batch"), True, False),
    (_PROTOCOL, True, True),
    (re.compile(r"/inference\.GRPCInferenceService/ModelInfer"), True, False),
    (re.compile(r"/tensorflow\.serving\.PredictionService/(Predict|Classify)"), True, False),
)


def body_limit(settings: Settings, path: str) -> int | None:
    """The largest body (or gRPC message) of a prediction path; None for any other path."""
    for pattern, many, base64 in PREDICTIONS:
        if pattern.fullmatch(path):
            files = settings.max_upload_bytes * (settings.max_files_per_request if many else 1)
            return (files * 4 // 3 if base64 else files) + MULTIPART_OVERHEAD
    return None


def json_too_large(settings: Settings, size: int | None = None) -> str:
    """The 413 of a JSON body past ``max_json_bytes`` (``size``: its length, if known)."""
    told = "" if size is None else f"{size} bytes, "
    rule = f"more than {settings.max_json_bytes} (CATDOG_MAX_JSON_BYTES)"
    return f"the JSON is {told}{rule}; send images as files (multipart, or binary tensor data)"


def route_label(path: str) -> str:
    """A prediction path's route template (metrics of answers given before routing)."""
    match = _PROTOCOL.fullmatch(path)
    if match is None:
        return path
    version = "/versions/{version}" if match["version"] else ""
    return f"/{match['api']}/models/{{name}}{version}{match['verb']}"


def client_key(host: str) -> str:
    """One spelling per client address (IPv4 mapped into IPv6 as IPv4); else as given."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return str(getattr(address, "ipv4_mapped", None) or address)


def peer_key(peer: str) -> str | None:
    """gRPC's peer (``ipv4:1.2.3.4:5``, ``ipv6:[%5B::1%5D]:5``) spelt as ``client_key`` does."""
    kind, _, rest = unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        return client_key(rest.rpartition(":")[0])
    return rest or None


@contextlib.asynccontextmanager
async def admitted(
    service: InferenceService, client: str | None, size: int = 0
) -> AsyncIterator[Upload]:
    """The request's ``Upload`` while its body (``size`` bytes) arrives and is used; else
    ``QueueFullError``, held ``busy_hold_s``: no image of ``client`` would be admitted
    now, or the body would pass the memory budget."""
    admission = service.admission
    try:
        admission.refuse_if_full(client=client)
        admission.hold(size)
    except QueueFullError:
        await asyncio.sleep(service.settings.busy_hold_s)
        raise
    try:
        with admission.uploading(client) as upload:
            yield upload
    finally:
        admission.release(size)


async def get_upload(request: Request) -> Upload | None:
    """This request's upload, opened by ``GateMiddleware``."""
    return request.scope.get(UPLOAD_KEY)


UploadDep = Annotated[Upload | None, Depends(get_upload)]


def request_id(presented: str | None) -> str:
    """The client's request id when it is up to 128 of ``[A-Za-z0-9._:-]``, else a new one."""
    return presented if presented and _VALID_ID.fullmatch(presented) else os.urandom(16).hex()


def header_int(value: str) -> int | None:
    """Up to 18 ASCII digits as an int, else None (``int`` takes ``"²"``, raises past 4,300)."""
    return int(value) if len(value) <= 18 and value.isascii() and value.isdigit() else None


class GateMiddleware:
    """The app's one middleware. Every HTTP request gets its ``RequestContext`` (in the
    scope, its id in ``x-request-id``), the key check (with ``keys``: 401 without an
    accepted ``Authorization: Bearer <key>``, except on ``OPEN_PATHS``), its count and
    time by route template and status, and with ``access_log`` its access line. A POST
    to a prediction path gets the gate: body and JSON limits (declared, then counted),
    the held 503 (a chunked body's bytes held as they arrive), its ``Upload``, and
    cancellation if its client leaves. A request cut off before its answer started
    (uvicorn's graceful-shutdown timeout) gets a JSON 503."""

    def __init__(self, app: ASGIApp, keys: ApiKeys | None = None, access_log: bool = False):
        self.app, self.keys, self.access_log = app, keys, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        service: InferenceService = scope["app"].state.service
        headers = Headers(scope=scope)
        context = RequestContext(request_id(headers.get(ID_HEADER)), "rest", scope["path"])
        scope[REQUEST_KEY] = context
        marked = (ID_HEADER.encode(), context.request_id.encode())
        status: int | None = None  # of the answer, once it started

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                kept = [(k, v) for k, v in message.get("headers", ()) if k != marked[0]]
                message = {**message, "headers": [*kept, marked]}
            await send(message)

        try:
            await self._gate(scope, receive, sending, headers, service, lambda: status is None)
        except asyncio.CancelledError:
            if status is not None:
                raise
            log.warning("cut off at shutdown: %s %s", scope["method"], scope["path"])
            detail = "server shutting down: the request was cut off; retry"
            cut = HTTPException(503, detail, {"Retry-After": "1", "Connection": "close"})
            await (await known_error(Request(scope), cut))(scope, receive, sending)
        finally:
            if status is None:  # nothing sent: the client had left, or the app failed
                status = CLIENT_GONE if scope.get(LEFT_KEY) else 500
            template = getattr(scope.get("route"), "path", None)
            route = template or scope.get(ROUTE_KEY, "unmatched")
            seconds = time.perf_counter() - started
            service.metrics.requests.labels(route, scope["method"], str(status)).inc()
            service.metrics.latency.labels(route).observe(seconds)
            if self.access_log:
                context.route = template or context.route
                logs.access(context, scope["method"], status, seconds)

    async def _gate(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, service: Any,
        unanswered: Callable[[], bool],
    ) -> None:  # fmt: skip
        path, settings = scope["path"], service.settings
        limit = body_limit(settings, path) if scope["method"] == "POST" else None
        length = None  # chunked: Transfer-Encoding wins over a Content-Length (RFC 9112)
        if "transfer-encoding" not in headers:
            length = header_int(headers.get("content-length", "-"))
        too_large = f"request body exceeds the limit of {limit} bytes"
        json_length = None  # of the body's JSON, when the headers say
        if limit is not None:
            scope[ROUTE_KEY] = route_label(path)
            match = _PROTOCOL.fullmatch(path)
            if match and (match["api"] == "v1" or JSON_LENGTH not in headers):
                json_length = length  # the whole body is JSON: its limit is the body's
                if settings.max_json_bytes < limit:
                    limit, too_large = settings.max_json_bytes, json_too_large(settings)
            elif match:  # OIP's binary tensor data after a JSON header of this length
                json_length = header_int(headers[JSON_LENGTH])
        try:
            if self.keys is not None and not OPEN_PATHS.fullmatch(path):
                scope[REQUEST_KEY].key_id = self.keys.authenticate(headers.get("authorization"))
            if b"%2f" in (scope.get("raw_path") or b"").lower():  # would split a path parameter
                raise HTTPException(400, "an encoded '/' (%2F) in the path is not accepted")
            if json_length is not None and json_length > settings.max_json_bytes:
                raise HTTPException(413, json_too_large(settings, json_length))
            if limit is not None and length is not None and length > limit:
                raise HTTPException(413, too_large)  # no "Connection: close": a client still
                # sending would get a reset (uvicorn closes with the body unread)
        except (HTTPException, Unauthenticated) as exc:
            await (await known_error(Request(scope), exc))(scope, receive, send)
            return
        if limit is None:
            await self.app(scope, receive, send)
            return
        received, watcher, admission = 0, None, service.admission

        async def watch() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and unanswered():
                scope[LEFT_KEY] = True
                task.cancel()
            return message

        async def app_receive() -> Message:
            """Counts the body; once it is in, only ``watch`` calls ``receive``."""
            nonlocal received, watcher
            if watcher is not None:
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if received + size > limit:
                    raise HTTPException(413, too_large)
                if length is None and size:  # chunked: held as it arrives
                    try:
                        admission.hold(size, own=received)
                    except QueueFullError:  # its bytes so far go back: the others may finish
                        admission.release(received)
                        received = 0
                        await asyncio.sleep(settings.busy_hold_s)
                        raise
                received += size
                if not message.get("more_body", False):
                    watcher = asyncio.ensure_future(watch())
            return message

        client = client_key(scope["client"][0]) if scope.get("client") else None
        try:
            async with admitted(service, client, length or 0) as upload:
                scope[UPLOAD_KEY] = upload
                upload.request = scope[REQUEST_KEY]
                # Once the body is in, a client that leaves cancels its request (a queued
                # image is skipped, its room released; counted as 499).
                task = asyncio.ensure_future(self.app(scope, app_receive, send))
                try:
                    await task
                except asyncio.CancelledError:
                    if not (scope.get(LEFT_KEY) and task.cancelled()):
                        raise  # cancelled itself (shutdown), not dropped for its client
                finally:
                    if watcher is not None:
                        watcher.cancel()
                    admission.release(received if length is None else 0)  # declared: by admitted
        except QueueFullError as exc:
            if UPLOAD_KEY in scope:
                raise  # refused later, by the service: the app answered it
            await (await known_error(Request(scope), exc))(scope, receive, send)


class _Context:
    """A call's servicer context with its ``RequestContext``; its request id in any trailers."""

    def __init__(self, inner: grpc.aio.ServicerContext, request: RequestContext) -> None:
        self._inner, self._trailer = inner, ((ID_HEADER, request.request_id),)
        self.catdog_request = request  # observe.REQUEST_KEY
        self.catdog_upload: Upload | None = None  # a prediction's, once admitted
        inner.set_trailing_metadata(self._trailer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        await self._inner.abort(code, details, tuple(trailing_metadata) + self._trailer)

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._inner.set_trailing_metadata(tuple(trailing_metadata) + self._trailer)


class GateInterceptor(grpc.aio.ServerInterceptor):
    """For every gRPC call: its request id (``x-request-id`` metadata, sent back in the
    trailers, also of an aborted call), the key check (``UNAUTHENTICATED`` without an
    accepted ``authorization`` metadata, except ``OPEN_METHODS``), the access line; for
    a call with images, the admission gate (``admitted``) before its message is read."""

    def __init__(
        self, service: InferenceService, keys: ApiKeys | None = None, access_log: bool = False
    ) -> None:
        self.service, self.keys, self.access_log = service, keys, access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        ways = ("unary", "stream")
        kind = f"{ways[handler.request_streaming]}_{ways[handler.response_streaming]}"
        inner = getattr(handler, kind)
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        method, keys = details.method, self.keys
        guarded = keys is not None and not OPEN_METHODS.search(method)
        service = self.service
        gated = body_limit(service.settings, method) is not None

        def follow(context: grpc.aio.ServicerContext) -> _Context:
            return _Context(
                context, RequestContext(request_id(metadata.get(ID_HEADER)), "grpc", method)
            )

        async def check(context: _Context) -> None:
            try:
                context.catdog_request.key_id = keys.authenticate(metadata.get("authorization"))
            except Unauthenticated as refused:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(refused))

        async def admitting(request: Any, context: _Context) -> Any:
            try:
                async with admitted(service, peer_key(context.peer())) as upload:
                    context.catdog_upload, upload.request = upload, context.catdog_request
                    return await inner(request, context)
            except QueueFullError as exc:  # refused at the gate (the service's own: answered)
                await context.abort(*status_of(exc, service.settings, method))

        def done(context: _Context, started: float) -> None:
            if self.access_log:
                code = getattr(context.code(), "name", str(context.code() or "OK"))
                logs.access(context.catdog_request, "gRPC", code, time.perf_counter() - started)

        if kind.endswith("_unary"):

            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, followed = time.perf_counter(), follow(context)
                try:
                    if guarded:
                        await check(followed)
                    if gated:
                        return await admitting(request, followed)
                    return await inner(request, followed)
                finally:
                    done(followed, started)

        else:

            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, followed = time.perf_counter(), follow(context)
                try:
                    if guarded:
                        await check(followed)
                    answers = inner(request, followed)
                    if inspect.iscoroutine(answers):  # a handler that calls context.write
                        await answers
                    else:
                        async for response in answers:
                            yield response
                finally:
                    done(followed, started)

        return getattr(grpc, f"{kind}_rpc_method_handler")(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
