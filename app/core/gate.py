"""The one admission gate in front of the model, for REST and gRPC alike.

``Admission`` counts images *in flight* (admitted, not yet answered) in all and per
client address, prediction bodies held in memory, and uploads still arriving (the batcher
may wait for them). Past a bound: ``QueueFullError`` (503, gRPC UNAVAILABLE).

``admitted`` is the gate, passed by every prediction request (``PREDICTIONS``) before its
body is read; a refusal is held ``busy_hold_s`` so that clients retrying at once cannot
spin. ``GateMiddleware`` is its REST face (body limit, refusal, a client that leaves
cancelling its request); gRPC's interceptor (``app.api.grpc_server``) calls it too.
``MetricsMiddleware`` counts every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, NamedTuple
from urllib.parse import unquote

from fastapi import Depends, HTTPException, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.errors import CLIENT_GONE, ErrorAnswer, QueueFullError, known_error, respond
from app.core.metrics import Metrics
from app.core.observe import RequestContext, request_of

if TYPE_CHECKING:
    from app.core.service import InferenceService

log = logging.getLogger("catdog")
UPLOAD_WINDOW_S = 1.0  # an upload still arriving after this long is not waited for
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
UPLOAD_KEY = "catdog.upload"  # scope keys: the request's Upload,
ROUTE_KEY = "catdog.route"  # its route label for answers sent before routing,
LEFT_KEY = "catdog.client_left"  # and whether its client left before its answer (499)


class Prediction(NamedTuple):
    """A prediction route (REST path or gRPC method) and how its files travel."""

    pattern: re.Pattern[str]
    files: bool  # up to max_files_per_request files (else one)
    base64: bool  # images travel as base64 text (4/3 of their bytes)


# Each {name} and {version} is Starlette's [^/]+ (a ":" included), or a path the router
# serves would pass ungated.
_PROTOCOL = re.compile(
    r"/(?P<api>v1|v2)/models/[^/]+(?P<version>/versions/[^/]+)?(?P<verb>/infer|:predict|:classify)"
)
PREDICTIONS = (
    Prediction(re.compile(r"/predict"), files=False, base64=False),
    Prediction(re.compile(r"/predict/batch"), files=True, base64=False),
    Prediction(_PROTOCOL, files=True, base64=True),
    Prediction(re.compile(r"/inference\.GRPCInferenceService/ModelInfer"), True, False),
    Prediction(
        re.compile(r"/tensorflow\.serving\.PredictionService/(Predict|Classify)"), True, False
    ),
)


def body_limit(settings: Settings, path: str) -> int | None:
    """The largest body (or gRPC message) of a prediction path; None for any other path."""
    for route in PREDICTIONS:
        if route.pattern.fullmatch(path):
            files = settings.max_upload_bytes * (
                settings.max_files_per_request if route.files else 1
            )
            return (files * 4 // 3 if route.base64 else files) + MULTIPART_OVERHEAD
    return None


def route_label(path: str) -> str:
    """A prediction path's route template, for metrics of answers given before routing
    (the client's model name and version would make a time series per spelling)."""
    match = _PROTOCOL.fullmatch(path)
    if match is None:
        return path
    version = "/versions/{version}" if match["version"] else ""
    return f"/{match['api']}/models/{{name}}{version}{match['verb']}"


def client_key(host: str) -> str:
    """The address a client is counted under: one spelling per address (an IPv4 address
    mapped into IPv6 as IPv4); anything else as given."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return str(getattr(address, "ipv4_mapped", None) or address)


def peer_key(peer: str) -> str | None:
    """The client's address in gRPC's peer (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, brackets
    maybe percent-encoded), as REST counts it (``client_key``)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        return client_key(rest.rpartition(":")[0])
    return rest or None


@dataclass(eq=False)
class Upload:
    """A prediction request whose body is still being received."""

    client: str | None = None  # its address, for ``per_client``
    started: float = field(default_factory=time.perf_counter)
    request: RequestContext | None = None  # as app.ops follows it (``observe.request_of``)


@dataclass
class Ticket:
    """Room reserved by one request; ``decoding`` of its images are not yet queued."""

    admission: Admission
    decoding: int

    def queued(self) -> None:
        """One of this request's images reached the batcher's queue."""
        self.decoding -= 1
        self.admission.decoding -= 1


class Admission:
    """Counts images in flight (in all and per client), bodies held, uploads on their way."""

    def __init__(
        self, limit: int, metrics: Metrics, per_client: int = 0, most_bytes: int = 0
    ) -> None:
        self.limit = limit
        self.most_bytes = most_bytes
        self.body_bytes = 0  # of prediction bodies held now (``holding``)
        self.started = 0  # prediction bodies and admissions so far (``activity``)
        self.per_client = per_client
        self.metrics = metrics
        self.in_flight = 0
        self.decoding = 0  # admitted images not yet queued for the batcher
        self.by_client: Counter[str] = Counter()
        self._uploads: set[Upload] = set()

    def refuse_if_full(self, images: int = 1, client: str | None = None) -> None:
        """``QueueFullError`` (counted) unless ``images`` more fit, in all and for ``client``."""
        if self.in_flight + images > self.limit:
            self.metrics.rejected.inc()
            raise QueueFullError(f"{self.in_flight} images in flight (limit {self.limit})")
        held = self.by_client[client] if client is not None else 0
        if self.per_client and held + images > self.per_client:
            self.metrics.client_capped.inc()
            raise QueueFullError(
                f"this client has {held} images in flight, and {images} more would pass its "
                f"limit of {self.per_client}"
            )

    @contextlib.contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """Count ``size`` bytes of a body as held until the request ends; ``QueueFullError``
        past ``most_bytes`` (unless no other body is held: a legal request fits alone)."""
        if self.most_bytes and self.body_bytes and self.body_bytes + size > self.most_bytes:
            self.metrics.rejected.inc()
            raise QueueFullError(
                f"{self.body_bytes} bytes of request bodies held, and {size} more would pass "
                f"the limit of {self.most_bytes}"
            )
        self.body_bytes += size
        self.started += 1
        try:
            yield
        finally:
            self.body_bytes -= size

    @contextlib.contextmanager
    def uploading(self, client: str | None = None) -> Iterator[Upload]:
        """Count a prediction upload as on its way until it is admitted or ends."""
        upload = Upload(client)
        self._uploads.add(upload)
        try:
            yield upload
        finally:
            self._uploads.discard(upload)

    @contextlib.contextmanager
    def admit(self, images: int, upload: Upload | None = None) -> Iterator[Ticket]:
        """Reserve room for ``images`` for the duration of a request, or raise (503)."""
        client = None if upload is None else upload.client
        if upload is not None:
            self._uploads.discard(upload)  # from now on its images count as decoding
        self.refuse_if_full(images, client)
        ticket = Ticket(self, images)
        self.started += 1
        self.in_flight += images
        self.decoding += images
        if client is not None:
            self.by_client[client] += images
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield ticket
        finally:
            self.in_flight -= images
            self.decoding -= ticket.decoding
            if client is not None:
                self.by_client[client] -= images
                if not self.by_client[client]:
                    del self.by_client[client]
            self.metrics.in_flight.set(self.in_flight)

    def activity(self) -> tuple[int, int]:
        """Work under way (images plus body bytes) and work started so far
        (``heap.release_when_idle`` watches both)."""
        return self.in_flight + self.body_bytes, self.started

    def on_the_way(self) -> int:
        """Images the batcher may wait for: decoding, and uploads younger than
        ``UPLOAD_WINDOW_S`` (a stalled client cannot hold every batch back)."""
        since = time.perf_counter() - UPLOAD_WINDOW_S
        return self.decoding + sum(1 for u in self._uploads if u.started > since)


@contextlib.asynccontextmanager
async def admitted(
    service: InferenceService, client: str | None, size: int = 0
) -> AsyncIterator[Upload]:
    """The request's ``Upload`` while its body (``size`` bytes) arrives and is used; else
    ``QueueFullError``, held ``busy_hold_s``: no image of ``client`` would be admitted
    now, or the body would pass the memory budget."""
    admission = service.admission
    with contextlib.ExitStack() as stack:
        try:
            admission.refuse_if_full(client=client)
            stack.enter_context(admission.holding(size))
        except QueueFullError:
            await asyncio.sleep(service.settings.busy_hold_s)
            raise
        with admission.uploading(client) as upload:
            yield upload


async def get_service(request: Request) -> InferenceService:
    """The app's inference service (``async``: a plain ``def`` would cost a thread hop)."""
    return request.app.state.service


async def get_upload(request: Request) -> Upload | None:
    """This request's upload, opened by ``GateMiddleware``."""
    return request.scope.get(UPLOAD_KEY)


ServiceDep = Annotated["InferenceService", Depends(get_service)]
UploadDep = Annotated[Upload | None, Depends(get_upload)]


def header_int(value: str) -> int | None:
    """A header's non-negative integer: up to 18 ASCII digits, else None (``int`` raises on
    ``"²"`` and on more than 4,300 digits)."""
    return int(value) if len(value) <= 18 and value.isascii() and value.isdigit() else None


class GateMiddleware:
    """The gate for POSTs to prediction paths: body limit (declared, then counted), the
    held 503, the ``Upload``; then the request is cancelled if its client leaves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%2f" in (scope.get("raw_path") or b"").lower():  # would split a path parameter
            detail = "an encoded '/' (%2F) in the path is not accepted"
            await respond(Request(scope), ErrorAnswer(400, detail))(scope, receive, send)
            return
        service: InferenceService = scope["app"].state.service
        limit = body_limit(service.settings, scope["path"]) if scope["method"] == "POST" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = route_label(scope["path"])
        too_large = f"request body exceeds the limit of {limit} bytes"
        declared = Headers(scope=scope).get("content-length")
        length = None if declared is None else header_int(declared)
        if length is not None and length > limit:
            # No "Connection: close": uvicorn would close the socket with the body unread and
            # a client still sending it would get a reset instead of this 413.
            response = respond(Request(scope), ErrorAnswer(413, too_large))
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
                    raise HTTPException(413, too_large)  # FastAPI renders it
            return message

        try:
            async with admitted(service, client, limit if length is None else length) as upload:
                scope[UPLOAD_KEY] = upload
                upload.request = request_of(scope)
                await call_until_client_leaves(self.app, scope, counting_receive, send)
        except QueueFullError as exc:
            if UPLOAD_KEY in scope:
                raise  # refused later, by the service: the app answered it
            response = await known_error(Request(scope), exc)
            await response(scope, receive, send)


async def call_until_client_leaves(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run ``app``; once it has read the whole body, cancel it if the client disconnects
    (a queued image is skipped, its room released; counted as 499). After the body only
    a watcher calls ``receive``; a later call by the app gets the watcher's message."""
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
    """Count requests by route template and status and time them; a request the server
    cut off before its answer started (uvicorn's graceful-shutdown timeout) gets a JSON
    503, not uvicorn's text/plain 500."""

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
            log.warning("cut off at shutdown: %s %s", scope["method"], scope["path"])
            detail = "server shutting down: the request was cut off; retry"
            headers = {"Retry-After": "1", "Connection": "close"}
            response = respond(Request(scope), ErrorAnswer(503, detail, headers))
            await response(scope, receive, recording_send)
        finally:
            if status is None:  # nothing sent: the client had left, or the app failed
                status = CLIENT_GONE if scope.get(LEFT_KEY) else 500
            route = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_KEY, "unmatched")
            metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            metrics.latency.labels(route=route).observe(time.perf_counter() - started)
