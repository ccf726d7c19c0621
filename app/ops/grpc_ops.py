"""gRPC side of the operations layer: one ``grpc.aio`` server interceptor.

As the REST middleware (``app.ops.rest``) does for HTTP, for every call it takes
the ``x-request-id`` metadata or makes an id, follows the call under it and sends
it back in the trailing metadata (also when the call fails: the handler's
``abort`` gets it added to its trailers); with API keys on, refuses a call without
an accepted key in the ``authorization`` metadata (``Bearer <key>``) with
``UNAUTHENTICATED``, except the health checks (``grpc.health.v1``, ``ServerLive``,
``ServerReady``, ``ModelReady``); with JSON logs on, writes its access line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from app.core.metrics import Metrics
from app.core.observe import CURRENT, RequestContext
from app.ops import logs
from app.ops.keys import ApiKeys, bearer
from app.ops.rest import HEADER, request_id

OPEN_METHODS = re.compile(r"^/grpc\.health\.v1\.Health/|/(ServerLive|ServerReady|ModelReady)$")
_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class _Context:
    """The call's context, with the request id added to whatever trailers it sends."""

    def __init__(self, inner: grpc.aio.ServicerContext, rid: str) -> None:
        self._inner = inner
        self._trailer = ((HEADER, rid),)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        await self._inner.abort(code, details, tuple(trailing_metadata) + self._trailer)

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._inner.set_trailing_metadata(tuple(trailing_metadata) + self._trailer)


class OpsInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, API keys and access lines for every gRPC call."""

    def __init__(self, metrics: Metrics, keys: ApiKeys | None, access_log: bool) -> None:
        self.metrics = metrics
        self.keys = keys
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        kind = next(k for k in _FACTORIES if getattr(handler, k) is not None)
        inner = getattr(handler, kind)
        method = details.method
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        guarded = self.keys is not None and not OPEN_METHODS.search(method)

        async def start(context: grpc.aio.ServicerContext) -> tuple[RequestContext, Any]:
            rid = request_id(metadata.get(HEADER))
            call = RequestContext(rid, "grpc", method)
            token = CURRENT.set(call)
            context.set_trailing_metadata(((HEADER, rid),))
            if guarded:
                presented = metadata.get("authorization")
                key = self.keys.check(bearer(presented) or presented)  # type: ignore[union-attr]
                if key is None:
                    reason = "invalid" if presented else "missing"
                    self.metrics.auth_refused.labels(reason=reason).inc()
                    message = (
                        "invalid API key"
                        if presented
                        else "missing API key: send the authorization metadata 'Bearer <key>'"
                    )
                    CURRENT.reset(token)
                    self._log(call, context, time.perf_counter(), "UNAUTHENTICATED")
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message, ((HEADER, rid),))
                call.key_id = key
                self.metrics.key_requests.labels(key_id=key).inc()
            return call, token

        if kind in ("unary_unary", "stream_unary"):

            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                call, token = await start(context)
                try:
                    return await inner(request, _Context(context, call.request_id))
                finally:
                    CURRENT.reset(token)
                    self._log(call, context, started)

        else:

            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                call, token = await start(context)
                try:
                    async for response in inner(request, _Context(context, call.request_id)):
                        yield response
                finally:
                    CURRENT.reset(token)
                    self._log(call, context, started)

        return _FACTORIES[kind](
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _log(
        self, call: RequestContext, context: grpc.aio.ServicerContext, started: float, code=None
    ) -> None:
        if not self.access_log:
            return
        if code is None:
            status = context.code()
            code = "OK" if status is None else getattr(status, "name", str(status))
        logs.access(call, "gRPC", code, time.perf_counter() - started)
