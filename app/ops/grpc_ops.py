"""gRPC side of the operations layer: one ``grpc.aio`` server interceptor.

As the REST middleware (``app.ops.rest``) does for HTTP, for every call it takes
the ``x-request-id`` metadata or makes an id and sends it back in the trailing
metadata (also when the call fails: the handler's ``abort`` gets it added to its
trailers). The handler gets the servicer context with the call's ``RequestContext``
on it (``app.core.observe.request_of``). With API keys on, a call without an
accepted key in the ``authorization`` metadata (``Bearer <key>``) is refused with
``UNAUTHENTICATED``, except the health checks (``grpc.health.v1``, ``ServerLive``,
``ServerReady``, ``ModelReady``); with JSON logs on, each call writes its access line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from app.core.observe import RequestContext
from app.ops import logs
from app.ops.keys import ApiKeys, Refused
from app.ops.rest import HEADER, request_id

OPEN_METHODS = re.compile(r"^/grpc\.health\.v1\.Health/|/(ServerLive|ServerReady|ModelReady)$")
_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class _Context:
    """The call's servicer context, carrying its ``RequestContext`` (as
    ``observe.REQUEST_KEY``) and adding the request id to whatever trailers it sends."""

    def __init__(self, inner: grpc.aio.ServicerContext, request: RequestContext) -> None:
        self._inner = inner
        self._trailer = ((HEADER, request.request_id),)
        self.catdog_request = request
        inner.set_trailing_metadata(self._trailer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        await self._inner.abort(code, details, tuple(trailing_metadata) + self._trailer)

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._inner.set_trailing_metadata(tuple(trailing_metadata) + self._trailer)


class OpsInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, API keys and access lines for every gRPC call."""

    def __init__(self, keys: ApiKeys | None, access_log: bool) -> None:
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
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        method, keys = details.method, self.keys
        guarded = keys is not None and not OPEN_METHODS.search(method)

        def follow(context: grpc.aio.ServicerContext) -> _Context:
            call = RequestContext(request_id(metadata.get(HEADER)), "grpc", method)
            return _Context(context, call)

        async def check(context: _Context) -> None:
            if guarded:
                try:
                    key = keys.authenticate(metadata.get("authorization"))
                except Refused as refused:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(refused))
                context.catdog_request.key_id = key

        if kind.endswith("_unary"):

            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, followed = time.perf_counter(), follow(context)
                try:
                    await check(followed)
                    return await inner(request, followed)
                finally:
                    self._log(followed, started)

        else:

            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, followed = time.perf_counter(), follow(context)
                try:
                    await check(followed)
                    async for response in inner(request, followed):
                        yield response
                finally:
                    self._log(followed, started)

        return _FACTORIES[kind](
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _log(self, context: _Context, started: float) -> None:
        if self.access_log:
            status = context.code()
            code = "OK" if status is None else getattr(status, "name", str(status))
            logs.access(context.catdog_request, "gRPC", code, time.perf_counter() - started)
