"""Open Inference Protocol v2 (REST): health, metadata, readiness and inference.

The conventions (inputs ``image_bytes`` and ``images``, base64 in JSON, the binary
tensor data and classification extensions) are in ``app/protocols/oip/codec.py`` and
docs/protocols.md; errors are ``{"error": ...}`` (``app/core/errors.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.schemas import PROTOCOL_ERRORS, VersionDep, request_body, versioned
from app.core.gate import ServiceDep, UploadDep
from app.protocols.oip import codec as oip
from app.protocols.oip import schemas as oip_schemas

router = APIRouter(tags=["open inference protocol v2"])
ERRORS = PROTOCOL_ERRORS
INFER_DOC = """Classify images: a BYTES input `image_bytes` holding encoded image files
(base64 strings in JSON), or an FP32 input `images` [N, H, W, 3] already scaled to
[0, 1]. Answers the FP32 output `probabilities` [N, C], or with the output parameter
`classification: k` BYTES strings `"score:index:label"`.

**Binary tensor data extension** (what tritonclient sends by default; OpenAPI cannot
describe it): the body is the JSON request followed by the inputs' raw bytes, the
header `Inference-Header-Content-Length` gives the length of the JSON, and each such
input has the parameter `binary_data_size`. A BYTES element is its 4-byte
little-endian length then the file; FP32 is little-endian float32, row-major. With
`binary_data: true` on the output (or `binary_data_output: true` on the request) the
answer is built the same way, with `Inference-Header-Content-Length` in its headers."""
INFER_BODY = request_body(oip_schemas.InferRequest, "the JSON request (see the description)")
INFER_ERRORS = {
    **ERRORS,
    200: {
        "description": "JSON, or with binary data JSON then bytes (see the description)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.get("/v2", response_model=oip_schemas.ServerMetadata)
async def server_metadata(request: Request) -> oip_schemas.ServerMetadata:
    """Server name, version and protocol extensions."""
    return oip.server_metadata(request.app.version)


@router.get("/v2/health/live", response_model=oip_schemas.ServerLive)
async def server_live() -> oip_schemas.ServerLive:
    """Liveness: 200 while the process answers."""
    return oip_schemas.ServerLive(live=True)


@router.get("/v2/health/ready", response_model=oip_schemas.ServerReady, responses={503: {}})
async def server_ready(service: ServiceDep) -> oip_schemas.ServerReady | JSONResponse:
    """Readiness: 200 once a model is loaded and warmed up, 503 before and when stopping."""
    if not service.ready:
        return JSONResponse({"ready": False}, status_code=503)
    return oip_schemas.ServerReady(ready=True)


@versioned(
    router,
    "GET",
    "/v2/models/{name}{at}",
    response_model=oip_schemas.ModelMetadata,
    responses=ERRORS,
)
async def model_metadata(
    name: str, service: ServiceDep, version: VersionDep
) -> oip_schemas.ModelMetadata:
    """Inputs, outputs, loaded versions and runtime of the model (or of one loaded version)."""
    return oip.model_metadata(service, name, version)


@versioned(
    router,
    "GET",
    "/v2/models/{name}{at}/ready",
    response_model=oip_schemas.ModelReady,
    responses=ERRORS,
)
async def model_ready(
    name: str, service: ServiceDep, version: VersionDep
) -> oip_schemas.ModelReady:
    """200 when the model (or this version) is loaded and the service accepts requests."""
    return oip.model_ready(service, name, version)


@versioned(
    router,
    "POST",
    "/v2/models/{name}{at}/infer",
    response_model=oip_schemas.InferResponse,
    responses=INFER_ERRORS,
    description=INFER_DOC,
    openapi_extra=INFER_BODY,
)
async def infer(
    name: str, request: Request, service: ServiceDep, upload: UploadDep, version: VersionDep
) -> Response:
    """Classify images or pixels with the highest loaded version, or the one named."""
    return await oip.infer(service, name, version, request, upload)
