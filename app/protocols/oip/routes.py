"""Open Inference Protocol v2 (REST): health, metadata, readiness and inference; the
binary tensor data extension as ``INFER_DOC`` (the infer route's OpenAPI text) says."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from app.api.schemas import PROTOCOL_ERRORS, VersionDep, request_body, versioned
from app.core.errors import ModelNotReadyError
from app.core.gate import UploadDep, header_int
from app.core.service import Classification, InferenceService, ServiceDep
from app.protocols.numbers import most_values, pack_numbers, parse_json, read_body
from app.protocols.oip import codec as oip
from app.protocols.oip.schemas import (
    EXTENSIONS,
    PROBABILITIES,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    RequestInput,
    ResponseOutput,
    ServerLive,
    ServerMetadata,
    ServerReady,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
router = APIRouter(tags=["open inference protocol v2"])
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
INFER_BODY = request_body(InferRequest, "the JSON request (see the description)")
INFER_ERRORS = {
    **PROTOCOL_ERRORS,
    200: {
        "description": "JSON, or with binary data JSON then bytes (see the description)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    """Server name, version and protocol extensions."""
    return ServerMetadata(name="catdog", version=request.app.version, extensions=EXTENSIONS)


@router.get("/v2/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    """Liveness: 200 while the process answers."""
    return ServerLive(live=True)


@router.get("/v2/health/ready", response_model=ServerReady, responses={503: {}})
async def server_ready(service: ServiceDep) -> ServerReady | JSONResponse:
    """Readiness: 200 once a model is loaded and warmed up, 503 before and when stopping."""
    if not service.ready:
        return JSONResponse({"ready": False}, status_code=503)
    return ServerReady(ready=True)


@versioned(
    router,
    "GET",
    "/v2/models/{name}{at}",
    response_model=ModelMetadata,
    responses=PROTOCOL_ERRORS,
)
async def model_metadata(name: str, service: ServiceDep, version: VersionDep) -> ModelMetadata:
    """Inputs, outputs, loaded versions and runtime of the model (or of one loaded version)."""
    return oip.model_metadata(service, name, version)


@versioned(
    router,
    "GET",
    "/v2/models/{name}{at}/ready",
    response_model=ModelReady,
    responses=PROTOCOL_ERRORS,
)
async def model_ready(name: str, service: ServiceDep, version: VersionDep) -> ModelReady:
    """200 when the model (or this version) is loaded and the service accepts requests."""
    oip.check_model_name(service, name)
    service.model_for(version)  # 404 if not loaded, 503 before the first load
    if not service.ready:
        raise ModelNotReadyError("the service is not accepting requests")
    return ModelReady(name=name, ready=True)


@versioned(
    router,
    "POST",
    "/v2/models/{name}{at}/infer",
    response_model=InferResponse,
    responses=INFER_ERRORS,
    description=INFER_DOC,
    openapi_extra=INFER_BODY,
)
async def infer(
    name: str, request: Request, service: ServiceDep, upload: UploadDep, version: VersionDep
) -> Response:
    """Classify images or pixels with the highest loaded version, or the one named."""
    oip.check_model_name(service, name)
    model = service.model_for(version)  # 404 before reading the body
    infer_request, binary = await read_request(
        service,
        await read_body(request),
        request.headers.get(HEADER_LENGTH),
        most_values(service.settings, model.contract),
    )
    output = oip.output_choice(infer_request, len(model.contract.class_names))
    tensor = oip.only_input(infer_request)
    given = oip.decode_input(tensor, _binary_part(tensor, binary), service.settings)
    del binary  # the body goes with it, unless pixels are a view of it
    results = await oip.classify_input(service, given, version, upload)
    return encode(infer_request, results, name, output)


async def read_request(
    service: InferenceService, body: bytearray, header_length: str | None, most: int
) -> tuple[InferRequest, memoryview]:
    """The JSON request and the binary tensor data after it: a view into ``body``."""
    if header_length is None:
        return await parse_json(service, InferRequest, body, most, _pack), memoryview(b"")
    split = header_int(header_length)
    if split is None or not 0 < split <= len(body):
        raise HTTPException(
            400,
            f"{HEADER_LENGTH}: {header_length!r} is not a length within the body "
            f"of {len(body)} bytes",
        )
    infer_request = await parse_json(service, InferRequest, body[:split], most, _pack)
    return infer_request, memoryview(body)[split:]


def _pack(request: InferRequest) -> None:
    """Each input's numbers as an array (``parse_json``)."""
    for tensor in request.inputs:
        tensor.data = pack_numbers(tensor.data, f"input {tensor.name}")  # type: ignore[assignment]


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
            raise HTTPException(400, f"{len(binary)} bytes of binary data but no binary_data_size")
        if tensor.data is None:
            raise HTTPException(400, f"input {tensor.name} has neither data nor binary_data_size")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise HTTPException(
            400,
            f"input {tensor.name}: binary_data_size {size!r} but {len(binary)} bytes follow "
            "the JSON",
        )
    if tensor.data is not None:
        raise HTTPException(400, f"input {tensor.name} has both data and binary_data_size")
    return binary
