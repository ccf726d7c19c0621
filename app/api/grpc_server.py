"""The gRPC server (``CATDOG_GRPC_ADDRESS``): the Open Inference Protocol, TF Serving's
API and gRPC health, on uvicorn's event loop and the same ``InferenceService`` as REST.

Every call passes ``app.core.gate.GateInterceptor`` first (request id, API key, and the
admission gate for a call with images), then reads its one message within
``body_timeout_s``, its fields counted on the wire before protobuf parses it
(``read_message``). Errors are REST's answers with the gRPC code of their status
(``app.core.errors.status_of``), and in the trailing metadata ``catdog-http-status`` (it
tells 413 from 415) and, for 503, ``retry-after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
from fastapi import HTTPException
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app.core.errors import status_of
from app.core.gate import body_limit, peer_key
from app.core.service import InferenceService
from app.protocols.messages import INFERENCE, TFSERVING, Call, Method
from app.protocols.oip.codec import RAW_INPUT_CONTENTS, InferenceServicer
from app.protocols.tfserving.servicer import MODEL_SERVICE, PREDICTION_SERVICE, TfServingServicer

log = logging.getLogger("catdog.grpc")
INFERENCE_SERVICE = "inference.GRPCInferenceService"
#: Fields a request message may hold, sub-messages' included: far above any real request
#: (32 images, or 32 examples of hundreds of features), parsed in milliseconds.
MOST_FIELDS = 65_536
WAITING_SHARE = 8  # a client may have 1/8 of the call slots waiting for their message
CONNECTION_AGE_S = 300.0  # a connection is asked to close (GOAWAY) at this age
IDLE_CONNECTION_S = 30.0  # a connection with no call this long is closed (clients reconnect)
_VARINTS = {  # packed repeated fields of varints: protobuf stores each byte in 4 or 8
    getattr(FieldDescriptor, f"TYPE_{name}")
    for name in ("INT32", "INT64", "UINT32", "UINT64", "SINT32", "SINT64", "BOOL", "ENUM")
}


def read_message(
    body: bytes, kind: type[Message], lift: int = 0, most: int = MOST_FIELDS
) -> tuple[Message, list[memoryview]]:
    """``body`` as a ``kind``, and its top-level bytes fields ``lift`` as views into it.

    A message of tiny fields costs protobuf ~25 times its size (a 319 MiB message of
    empty fields: +8.6 GB), so fields, sub-messages' fields and each byte of a packed
    run of varints are counted first: 413 past ``most``. What protobuf would refuse
    (a group, a field past its message's end, a key or length over 5 bytes) is a 400.
    """
    view, kept, lifted, start, fields = memoryview(body), [], [], 0, 0
    stack: list[tuple[int, int, Any, bool]] = [(0, len(body), kind.DESCRIPTOR, True)]
    try:
        while stack:
            position, end, message, top = stack.pop()
            while position < end:
                fields += 1
                at = position
                number, wire, value, position = _field(body, position)
                if position < 0:
                    raise DecodeError(f"wire type {wire} (a group?) at byte {at}")
                if position > end:
                    raise DecodeError(f"a field at byte {at} runs past its message's end")
                field = None if message is None else message.fields_by_number.get(number)
                if top and wire == 2 and number == lift:
                    kept.append(view[start:at])
                    lifted.append(view[value:position])
                    start = position
                elif wire == 2 and field is not None:
                    if field.message_type is not None:
                        stack.append((value, position, field.message_type, False))
                    elif field.is_repeated and field.type in _VARINTS:
                        fields += position - value
                if fields > most:
                    raise HTTPException(413, f"the message holds more than {most} fields")
        rest = b"".join([*kept, view[start:]]) if lifted else body
        return kind.FromString(rest), lifted
    except DecodeError as exc:
        raise HTTPException(400, f"not a {kind.DESCRIPTOR.full_name}: {exc}") from None


def _field(body: bytes, position: int) -> tuple[int, int, int, int]:
    """The number, wire type, value start and end (-1: a group) of the field at
    ``position``; ``DecodeError`` for what protobuf refuses."""
    key, value = _varint(body, position, 5)
    number, wire = key >> 3, key & 7
    if key >= 1 << 32 or number == 0:
        raise DecodeError(f"field number {number} at byte {position}")
    if wire == 0:
        end = _varint(body, value)[1]
    elif wire in (1, 5):
        end = value + (8 if wire == 1 else 4)
    elif wire == 2:
        length, value = _varint(body, value, 5)
        if length >= 1 << 31:
            raise DecodeError(f"a length of {length} at byte {position}")
        end = value + length
    elif wire in (3, 4):
        end = -1
    else:
        raise DecodeError(f"wire type {wire} at byte {position}")
    return number, wire, value, end


def _varint(data: bytes, position: int, most_bytes: int = 10) -> tuple[int, int]:
    """The varint at ``position`` (at most ``most_bytes`` long) and the position after it."""
    value = shift = 0
    while position < len(data) and shift < 7 * most_bytes:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise DecodeError(f"a varint at byte {position} does not end")


class GrpcServer:
    """A ``grpc.aio`` server bounded as REST is (connections, calls, idle and handshake
    times, message size, no compression, calls waiting per client)."""

    def __init__(
        self, service: InferenceService, version: str, interceptors: Sequence[Any] = ()
    ) -> None:
        self.service = service
        self.servicer = InferenceServicer(service, version)
        self.tfserving = TfServingServicer(service)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._stopping: asyncio.Future[None] | None = None
        settings = service.settings
        self._waiting_by_client: Counter[str | None] = Counter()
        self._most_waiting = max(16, settings.max_connections // WAITING_SHARE)
        largest = body_limit(settings, "/inference.GRPCInferenceService/ModelInfer")
        self._server = grpc.aio.server(
            # app.ops's: trace spans, then app.core.gate.GateInterceptor (request ids, API
            # keys, admission, in that order: no key, no place in line)
            interceptors=list(interceptors),
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
            (INFERENCE_SERVICE, INFERENCE, self.servicer),
            (PREDICTION_SERVICE, TFSERVING, self.tfserving),
            (MODEL_SERVICE, TFSERVING, self.tfserving),
        )
        for name, proto, servicer in services:
            # Each call reads its one message itself, so that the gate comes first and the
            # read is bounded in time (grpcio's unary handler never answers a call that
            # ends without a message).
            handlers = {
                method_name: grpc.stream_unary_rpc_method_handler(
                    self._answering(method, getattr(servicer, method_name)),
                    response_serializer=method.response.SerializeToString,
                )
                for method_name, method in proto.services[name].items()
            }
            handler = grpc.method_handlers_generic_handler(name, handlers)
            self._server.add_generic_rpc_handlers([handler])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)

    def _answering(
        self, method: Method, call: Callable[[Call], Awaitable[Message]]
    ) -> Callable[[object, grpc.aio.ServicerContext], Awaitable[Message]]:
        """``call`` on the request read, errors answered as the module says, counted."""
        metrics, settings = self.service.metrics, self.service.settings
        lift = RAW_INPUT_CONTENTS if method.path.endswith("/ModelInfer") else 0

        async def answer(requests: object, context: grpc.aio.ServicerContext) -> Message:
            started = time.perf_counter()
            code, body, request = grpc.StatusCode.OK, b"", None
            try:
                with self._waiting(peer_key(context.peer())):
                    body = await self._read(context)
                upload = getattr(context, "catdog_upload", None)  # GateInterceptor's, if gated
                request = Call(*read_message(body, method.request, lift), upload)
                with self.service.admission.holding(len(body) if upload is not None else 0):
                    body = b""
                    return await call(request)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, text, trailers = status_of(exc, settings, method.path)
            finally:
                metrics.grpc_requests.labels(method=method.path, code=code.name).inc()
                metrics.latency.labels(route=method.path).observe(time.perf_counter() - started)
            # The abort's traceback holds this frame, and grpc.aio keeps the last aborted
            # call's: the refused request must not stay in memory with it.
            body, request = b"", None
            await context.abort(code, text, trailers)

        return answer

    @contextlib.contextmanager
    def _waiting(self, client: str | None) -> Iterator[None]:
        """A call of ``client`` waiting for its message; 503 past ``_most_waiting`` (calls
        that send nothing would hold every slot until the body timeout)."""
        waiting = self._waiting_by_client
        if waiting[client] >= self._most_waiting:
            message = (
                f"this client has {waiting[client]} calls waiting for their message "
                f"(at most {self._most_waiting}); retry shortly"
            )
            retry = {"Retry-After": str(self.service.settings.retry_after_s)}
            raise HTTPException(503, message, retry)
        waiting[client] += 1
        try:
            yield
        finally:
            waiting[client] -= 1
            if not waiting[client]:
                del waiting[client]

    async def _read(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's one request message, whole within ``body_timeout_s``."""
        limit = self.service.settings.body_timeout_s
        try:
            body = await asyncio.wait_for(context.read(), limit)
        except (asyncio.TimeoutError, TimeoutError):
            message = f"the request message did not arrive within {limit:g} s"
            raise HTTPException(408, message) from None
        if body is grpc.aio.EOF:  # also how a call cancelled before its message reads here
            raise HTTPException(400, "no request message")
        try:  # a unary call's client ends its stream after its one message
            more = await asyncio.wait_for(context.read(), limit)
        except (asyncio.TimeoutError, TimeoutError):
            more = None
        if more is not grpc.aio.EOF:
            raise HTTPException(
                400, "a unary call takes one request message and the end of its stream"
            )
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
        """Refuse new calls; those in flight get ``grace`` seconds (once)."""
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
