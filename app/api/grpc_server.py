"""The gRPC server: the Open Inference Protocol and TF Serving's API beside REST.

With ``CATDOG_GRPC_ADDRESS`` set (``0.0.0.0:8081`` in the images), the lifespan starts
a ``grpc.aio`` server on uvicorn's event loop. It answers the six calls of
``inference.GRPCInferenceService`` (``app/protocols/oip/servicer.py``; what KServe, Triton and
``tritonclient.grpc`` speak), TF Serving's gRPC calls (``app/protocols/tfserving/servicer.py``)
and gRPC's health check (grpcio-health-checking's servicer), on the same
``InferenceService`` as REST: the same admission (the client's share too, by its
address), decoders, batcher, limits and metrics.

Each call reads its one request message itself, within ``body_timeout_s``
(``GrpcServer._read``), after the admission gate of a call with images
(``GateInterceptor``, the gate of ``app.core.gate``), and counts its elements on the wire
before protobuf parses it (``MOST_FIELDS``); ``GrpcServer`` says how connections and
calls are bounded.

An error is the REST answer's message with a gRPC status code (``GRPC_CODES``: 400,
413, 415, 422 are INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE, a fault 500
INTERNAL; a message late
past the body timeout is DEADLINE_EXCEEDED, 408), cut to 512 characters, and in the
trailing metadata ``catdog-http-status`` (the REST status, which tells 413 from 415)
and, for 503, ``retry-after``; a full queue's UNAVAILABLE is held by the gate, as REST's
503 is. A client that
cancels, or whose deadline passes, is dropped wherever its call is, as a REST client
that leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app.core.config import Settings
from app.core.errors import QueueFullError, answer_for, cut, fault_answer
from app.core.gate import Upload, admitted, body_limit, peer_key
from app.core.observe import request_of
from app.core.service import InferenceService
from app.protocols import wire
from app.protocols.messages import INFERENCE, TFSERVING, Method
from app.protocols.oip.servicer import InferenceServicer, read_infer_call
from app.protocols.tfserving.servicer import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    TfServingServicer,
)
from app.protocols.tfserving.servicer import Call as TfServingCall

log = logging.getLogger("catdog.grpc")
INFERENCE_SERVICE = "inference.GRPCInferenceService"
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,  # too large whatever the load: retrying won't help
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
HTTP_STATUS = "catdog-http-status"  # trailing metadata: the status REST would answer
Trailers = tuple[tuple[str, str], ...]
#: Fields a request message may hold, its sub-messages' included: far above any real
#: request (32 images, or 32 examples of hundreds of features), and parsed in
#: milliseconds into a few MB; a message of tiny fields costs ~25 times its size.
MOST_FIELDS = 65_536
WAITING_SHARE = 8  # a client may have 1/8 of the call slots waiting for their message
CONNECTION_AGE_S = 300.0  # a connection is asked to close (GOAWAY) at this age
IDLE_CONNECTION_S = 30.0  # a connection with no call this long is closed (clients reconnect)
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]


def _tfserving_call(request: type[Message], body: bytes) -> TfServingCall:
    return TfServingCall(request.FromString(body))


class GrpcError(Exception):
    """A call's answer is this status code and message (``status``: REST's for it)."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def status_of(
    exc: Exception, settings: Settings, path: str
) -> tuple[grpc.StatusCode, str, Trailers]:
    """A call's error as its gRPC status code, message (at most
    ``errors.MOST_ECHO``: it may echo the client's input) and trailing metadata."""
    if isinstance(exc, GrpcError):
        trailers: Trailers = ((HTTP_STATUS, str(exc.status)),)
        if exc.status == 503:
            trailers += (("retry-after", str(settings.retry_after_s)),)
        return exc.code, cut(str(exc)), trailers
    found = answer_for(exc, settings)
    if found is None:
        log.exception("%s failed", path)
        found = fault_answer(exc)
    trailers = ((HTTP_STATUS, str(found.status)),)
    if "Retry-After" in found.headers:
        trailers += (("retry-after", found.headers["Retry-After"]),)
    return GRPC_CODES.get(found.status, grpc.StatusCode.UNKNOWN), cut(found.detail), trailers


class GateInterceptor(grpc.aio.ServerInterceptor):
    """The admission gate (``app.core.gate.admitted``) of a call with images, before its
    message is read; its ``Upload`` is handed to the call through ``uploads``."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.uploads: dict[object, Upload] = {}  # by the call's context, while it runs

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or body_limit(self.service.settings, details.method) is None:
            return handler
        call = handler.stream_unary

        async def gated(requests: object, context: grpc.aio.ServicerContext) -> Message:
            try:
                async with admitted(self.service, peer_key(context.peer())) as upload:
                    self.uploads[context] = upload
                    upload.request = request_of(context)
                    try:
                        return await call(requests, context)
                    finally:
                        del self.uploads[context]
            except QueueFullError as exc:
                _, message, trailers = status_of(exc, self.service.settings, details.method)
                await context.abort(grpc.StatusCode.UNAVAILABLE, message, trailers)
                raise  # abort raises; not reached

        return grpc.stream_unary_rpc_method_handler(
            gated, response_serializer=handler.response_serializer
        )


class GrpcServer:
    """A ``grpc.aio`` server on the running event loop, serving ``InferenceServicer``,
    ``TfServingServicer`` and gRPC health.

    Bounded as the HTTP launcher bounds REST: at most ``max_connections`` connections
    (more are closed at once) and as many calls at a time, a connection closed after
    ``IDLE_CONNECTION_S`` without a call or ``header_timeout_s`` without finishing its
    HTTP/2 handshake, messages up to the batch limit and not compressed, and at most an
    eighth of the call slots (at least 16) waiting for one client's messages.
    A call with images is refused (UNAVAILABLE) before its message is read when not even
    one image would be admitted (``GateInterceptor``), as REST's gate refuses a body, so
    that a full server receives no more.
    """

    def __init__(
        self, service: InferenceService, version: str, interceptors: Sequence[Any] = ()
    ) -> None:
        self.service = service
        self.servicer = InferenceServicer(service, version)
        self.tfserving = TfServingServicer(service)
        self.health = health.aio.HealthServicer()
        self.gate = GateInterceptor(service)
        self.port: int | None = None
        self._stopping: asyncio.Future[None] | None = None
        settings = service.settings
        self._waiting_by_client: Counter[str | None] = Counter()
        self._most_waiting = max(16, settings.max_connections // WAITING_SHARE)
        largest = body_limit(settings, "/inference.GRPCInferenceService/ModelInfer")
        self._server = grpc.aio.server(
            # app.ops's first (trace spans, request ids, API keys): no key, no place in line
            interceptors=[*interceptors, self.gate],
            options=[
                ("grpc.max_receive_message_length", largest),
                ("grpc.max_send_message_length", largest),
                ("grpc.max_allowed_incoming_connections", settings.max_connections),
                ("grpc.max_connection_idle_ms", int(IDLE_CONNECTION_S * 1000)),
                # Clients reconnect now and then, so that new pods get their share (a
                # Kubernetes Service balances connections, not calls).
                ("grpc.max_connection_age_ms", int(CONNECTION_AGE_S * 1000)),
                ("grpc.max_connection_age_grace_ms", int(settings.graceful_shutdown_s * 1000)),
                ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
                # Uncompressed messages only (UNIMPLEMENTED otherwise): a few hundred kB of
                # gzip inflates to the whole message limit, and images are compressed already.
                ("grpc.compression_enabled_algorithms_bitset", 1),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ],
            maximum_concurrent_rpcs=settings.max_connections,
        )
        services = (
            (INFERENCE.services[INFERENCE_SERVICE], self.servicer),
            (TFSERVING.services[PREDICTION_SERVICE], self.tfserving),
            (TFSERVING.services[MODEL_SERVICE], self.tfserving),
        )
        for methods, servicer in services:
            name = next(iter(methods.values())).path.split("/")[1]
            handlers = self._handlers(methods, servicer)
            self._server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler(name, handlers)]
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)

    def _handlers(
        self, methods: dict[str, Method], servicer: object
    ) -> dict[str, grpc.RpcMethodHandler]:
        """Each call reads its one request message itself (a unary call on the wire), so that
        the read is bounded in time and the gate of a call with images comes before it.
        (grpcio's own unary handler never answers a call that ends without a message.)"""
        handlers = {}
        for name, method in methods.items():
            parse: Callable[[bytes], object] = method.request.FromString
            if name == "ModelInfer":
                parse = read_infer_call
            elif name in ("Predict", "Classify"):
                parse = functools.partial(_tfserving_call, method.request)
            handlers[name] = grpc.stream_unary_rpc_method_handler(
                self._answering(method, getattr(servicer, name), parse),
                response_serializer=method.response.SerializeToString,
            )
        return handlers

    def _answering(
        self, method: Method, call: Handler, parse: Callable[[bytes], object]
    ) -> Handler:
        """``call`` on the request read from its bytes by ``parse`` (INVALID_ARGUMENT if it is
        not one), its errors answered as the module docstring says, and counted."""
        metrics = self.service.metrics
        settings = self.service.settings
        path = method.path

        async def answer(requests: object, context: grpc.aio.ServicerContext) -> Message:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                with self._waiting(peer_key(context.peer())):
                    request, size = await self._receive(context, method, parse)
                upload = self.gate.uploads.get(context)
                if upload is not None:
                    request = request._replace(upload=upload)  # type: ignore[attr-defined]
                with self.service.admission.holding(size if upload is not None else 0):
                    return await call(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message, trailers = status_of(exc, settings, path)
            finally:
                metrics.grpc_requests.labels(method=path, code=code.name).inc()
                metrics.latency.labels(route=path).observe(time.perf_counter() - started)
            # The abort's traceback holds this frame, and grpc.aio keeps the last aborted
            # call's: the refused request must not stay in memory with it.
            request = None
            await context.abort(code, message, trailers)

        return answer

    @contextlib.contextmanager
    def _waiting(self, client: str | None) -> Iterator[None]:
        """Count a call of ``client`` as waiting for its message; UNAVAILABLE past
        ``_most_waiting``, so that one client cannot hold every call slot with calls
        that send nothing (each would hold one until the body timeout)."""
        waiting = self._waiting_by_client
        if waiting[client] >= self._most_waiting:
            message = (
                f"this client has {waiting[client]} calls waiting for their message "
                f"(at most {self._most_waiting}); retry shortly"
            )
            raise GrpcError(grpc.StatusCode.UNAVAILABLE, message, 503)
        waiting[client] += 1
        try:
            yield
        finally:
            waiting[client] -= 1
            if not waiting[client]:
                del waiting[client]

    async def _receive(
        self, context: grpc.aio.ServicerContext, method: Method, parse: Callable[[bytes], object]
    ) -> tuple[Any, int]:
        """The call's request and its size: its message read (``_read``), its elements
        counted on the wire (``wire.check_fields``: 413 past ``MOST_FIELDS``), then parsed
        (400 if it is not the method's message)."""
        body = await self._read(context)
        try:
            wire.check_fields(body, method.request.DESCRIPTOR, MOST_FIELDS)
            return parse(body), len(body)
        except wire.TooManyFieldsError as exc:
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), 413) from None
        except DecodeError as exc:
            name = method.request.DESCRIPTOR.full_name
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"not a {name}: {exc}", 400) from None
        finally:
            del body

    async def _read(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's request message, whole within ``body_timeout_s`` (gRPC shows no
        progress inside a message); a second message on the call is refused."""
        limit = self.service.settings.body_timeout_s
        try:
            body = await asyncio.wait_for(context.read(), limit)
        except (asyncio.TimeoutError, TimeoutError):
            message = f"the request message did not arrive within {limit:g} s"
            raise GrpcError(grpc.StatusCode.DEADLINE_EXCEEDED, message, 408) from None
        if body is grpc.aio.EOF:  # also how a call cancelled before its message reads here
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "no request message", 400)
        try:  # a unary call's client ends its stream after its one message
            more = await asyncio.wait_for(context.read(), limit)
        except (asyncio.TimeoutError, TimeoutError):
            more = None
        if more is not grpc.aio.EOF:
            message = "a unary call takes one request message and the end of its stream"
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, message, 400)
        return body

    async def start(self, address: str) -> None:
        """Listen on ``address`` (``host:port``; port 0: a free one, then in ``port``)."""
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", INFERENCE_SERVICE, PREDICTION_SERVICE, MODEL_SERVICE):
            await self.health.set(name, serving)
        log.info(
            "gRPC (Open Inference Protocol) on %s", address.rpartition(":")[0] + f":{self.port}"
        )

    def begin_stop(self, grace: float) -> None:
        """Refuse new calls from now on; those in flight get ``grace`` seconds, then are
        cancelled. Once: a later call changes nothing."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()  # NOT_SERVING
        await self._server.stop(grace)

    async def stop(self, grace: float) -> None:
        """``begin_stop``, and wait until the server has stopped."""
        self.begin_stop(grace)
        assert self._stopping is not None
        await self._stopping
