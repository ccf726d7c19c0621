"""Open Inference Protocol v2 (REST): health, metadata, readiness and inference.

The inputs and output are ``app/protocols/oip/codec.py``'s (and docs/protocols.md);
errors are ``{"error": ...}`` (``app/core/errors.py``). Binary tensor data extension:
the body is the JSON request followed by the inputs' bytes in input order,
``Inference-Header-Content-Length`` gives the JSON's length and each binary input says
its size in ``parameters.binary_data_size``. The output is sent so when its parameter
``binary_data`` (or, for outputs without it, the request's ``binary_data_output``) is
true, and the answer is built the same way.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.schemas import PROTOCOL_ERRORS, VersionDep, request_body, versioned
from app.core.config import Settings
from app.core.gate import ServiceDep, UploadDep, header_int
from app.core.service import Classification, InferenceService
from app.protocols.common import (
    bad_request,
    check_model_name,
    classify_input,
    pack_numbers,
    read_body,
)
from app.protocols.numbers import most_values, parse_json
from app.protocols.oip import codec as oip
from app.protocols.oip import schemas as oip_schemas
from app.protocols.oip.schemas import (
    EXTENSIONS,
    PROBABILITIES,
    InferRequest,
    InferResponse,
    RequestInput,
    ResponseOutput,
    ServerMetadata,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
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
    return ServerMetadata(name="catdog", version=request.app.version, extensions=EXTENSIONS)


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
    check_model_name(service, name)
    model = service.model_for(version)  # 404 before reading the body
    infer_request, binary = await read_request(
        service,
        await read_body(request),
        request.headers.get(HEADER_LENGTH),
        most_values(service.settings, model.contract),
    )
    output = oip.output_choice(infer_request, len(model.contract.class_names))
    given = model_input(infer_request, binary, service.settings)
    del binary  # the body goes with it, unless pixels are a view of it
    results = await classify_input(service, given, version, upload)
    return encode(infer_request, results, name, output)


async def read_request(
    service: InferenceService, body: bytearray, header_length: str | None, most: int
) -> tuple[InferRequest, memoryview]:
    """The JSON request and the binary tensor data after it (empty without the extension),
    a view into ``body``, not a copy.

    ``most``: the most values the JSON part may hold (``parse_json``).
    """
    if header_length is None:
        return await parse_json(service, InferRequest, body, most, _pack), memoryview(b"")
    split = header_int(header_length)
    if split is None or not 0 < split <= len(body):
        raise bad_request(
            f"{HEADER_LENGTH}: {header_length!r} is not a length within the body "
            f"of {len(body)} bytes"
        )
    infer_request = await parse_json(service, InferRequest, body[:split], most, _pack)
    return infer_request, memoryview(body)[split:]


def _pack(request: InferRequest) -> None:
    """In the parsing worker (``parse_json``): each input's numbers as an array."""
    for tensor in request.inputs:
        tensor.data = pack_numbers(tensor.data, f"input {tensor.name}")  # type: ignore[assignment]


def model_input(request: InferRequest, binary: memoryview, settings: Settings) -> oip.Input:
    """The request's one input, decoded from JSON or binary tensor data."""
    tensor = oip.only_input(request)
    return oip.decode_input(tensor, _binary_part(tensor, binary), settings)


def encode(
    request: InferRequest, results: list[Classification], name: str, output: oip.OutputChoice
) -> Response:
    """The answer: JSON, or JSON followed by binary tensor data."""
    datatype, shape, elements = oip.answer_tensor(results, output)
    tensor = ResponseOutput(name=PROBABILITIES, datatype=datatype, shape=shape)
    raw = oip.raw_tensor(elements) if output.binary else b""
    if output.binary:
        tensor.parameters = {"binary_data_size": len(raw)}
    elif isinstance(elements, np.ndarray):
        tensor.data = elements.ravel().tolist()
    else:
        tensor.data = [s.decode() for s in elements]
    answer = InferResponse(
        model_name=name, model_version=results[0].model_version, id=request.id, outputs=[tensor]
    )
    header = answer.model_dump_json(exclude_none=True).encode()
    if not output.binary:
        return Response(header, media_type="application/json")
    return Response(
        header + raw,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _binary_part(tensor: RequestInput, binary: memoryview) -> memoryview | None:
    """The input's binary tensor data (None: its data is in the JSON)."""
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise bad_request(f"{len(binary)} bytes of binary data but no binary_data_size")
        if tensor.data is None:
            raise bad_request(f"input {tensor.name} has neither data nor binary_data_size")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise bad_request(
            f"input {tensor.name}: binary_data_size {size!r} but {len(binary)} bytes follow "
            "the JSON"
        )
    if tensor.data is not None:
        raise bad_request(f"input {tensor.name} has both data and binary_data_size")
    return binary
