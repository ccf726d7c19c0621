"""The one admission gate in front of prediction requests, REST and gRPC alike.

Every prediction request (a path or gRPC method of ``PREDICTIONS``) passes ``admitted``
before its body is read: when no image would be admitted (in all, or for this client,
``CATDOG_MAX_IMAGES_PER_CLIENT``), it is refused with ``QueueFullError`` after a hold of
``busy_hold_s``, so that a client retrying at once cannot spin (a crowd of them costs a
few refusals a second each instead of thousands). The REST middleware
(``app.api.middleware``) answers it as 503 with Retry-After, the gRPC interceptor
(``app.api.grpc_server``) as UNAVAILABLE with ``retry-after``. An admitted request opens
its ``Upload``, so the batcher knows it is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import AsyncIterator
from typing import NamedTuple
from urllib.parse import unquote

from app.core.admission import Upload
from app.core.config import Settings
from app.core.errors import QueueFullError
from app.core.service import InferenceService

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes


class Prediction(NamedTuple):
    """A prediction route: its REST path pattern or gRPC method, and how its files travel."""

    pattern: re.Pattern[str]
    base64: bool  # images travel as base64 text (4/3 of their bytes)


# Each {name} and {version} is Starlette's [^/]+ (a ":" included), or a path the router
# serves would pass ungated.
_PROTOCOL = (
    r"/(?P<api>v1|v2)/models/[^/]+(?P<version>/versions/[^/]+)?(?P<verb>/infer|:predict|:classify)"
)
PREDICTIONS = (
    Prediction(re.compile(r"/predict"), base64=False),
    Prediction(re.compile(r"/predict/batch"), base64=False),
    Prediction(re.compile(_PROTOCOL), base64=True),
    Prediction(re.compile(r"/inference\.GRPCInferenceService/ModelInfer"), base64=False),
    Prediction(re.compile(r"/tensorflow\.serving\.PredictionService/(Predict|Classify)"), False),
)
_LABEL = re.compile(_PROTOCOL)


def body_limit(settings: Settings, path: str) -> int | None:
    """The largest body (or gRPC message) accepted on a prediction path; None for any
    other path."""
    for position, route in enumerate(PREDICTIONS):
        if route.pattern.fullmatch(path):
            files = settings.max_upload_bytes * (
                1 if position == 0 else settings.max_files_per_request
            )
            return (files * 4 // 3 if route.base64 else files) + MULTIPART_OVERHEAD
    return None


def route_label(path: str) -> str:
    """The route template of a prediction path, for metrics labels answered before routing.

    A path's model name and version are the client's to choose; as labels they would
    make a new time series per spelling, so they are replaced by their placeholders.
    """
    match = _LABEL.fullmatch(path)
    if match is None:
        return path
    version = "/versions/{version}" if match["version"] else ""
    return f"/{match['api']}/models/{{name}}{version}{match['verb']}"


def client_key(host: str) -> str:
    """The address a client is counted under (``CATDOG_MAX_IMAGES_PER_CLIENT``): one
    spelling per address, an IPv4 address mapped into IPv6 as IPv4; anything else as
    given."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def peer_key(peer: str) -> str | None:
    """The client's address from gRPC's peer (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, in
    newer gRPC with the brackets percent-encoded), as REST counts it (``client_key``)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        return client_key(rest.rpartition(":")[0])
    return rest or None


@contextlib.asynccontextmanager
async def admitted(
    service: InferenceService, client: str | None, size: int = 0
) -> AsyncIterator[Upload]:
    """The request's ``Upload`` while its body (``size`` bytes) arrives and is used;
    ``QueueFullError``, held ``busy_hold_s``, when no image of ``client`` would be
    admitted now, or the body would pass the memory budget (``Admission.holding``)."""
    with contextlib.ExitStack() as stack:
        try:
            service.refuse_if_full(client=client)
            stack.enter_context(service.admission.holding(size))
        except QueueFullError:
            await asyncio.sleep(service.settings.busy_hold_s)
            raise
        with service.uploading(client) as upload:
            yield upload
