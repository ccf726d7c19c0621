"""Open Inference Protocol v2 (REST): schemas and codec of ``app/protocols/oip/routes.py``.

The model ``catdog`` has two inputs, of which a request gives exactly one:

* ``image_bytes``, BYTES, shape ``[N]`` (or ``[N, 1]``): encoded image files (JPEG,
  PNG, ...), decoded by the service's one preprocessing as for ``/predict``. In JSON
  each element is the file in base64 (the input parameter ``content_type`` may say
  ``"base64"``, MLServer's name for this; no other value is accepted). With the
  binary tensor data extension each element is the file's raw bytes, preceded by its
  length as 4 bytes little-endian (what tritonclient sends for a BYTES tensor).
* ``images``, FP32, shape ``[N, H, W, 3]``: pixels already scaled per the contract
  (``x/255``, in [0, 1]); JSON numbers (flat row-major, or nested), or little-endian
  float32 with the binary extension. Shape and range are checked (400).

The output ``probabilities`` is FP32 ``[N, C]`` in the contract's class order. It is
sent as binary tensor data when the output's parameter ``binary_data`` (or, for
outputs without it, the request's ``binary_data_output``) is true. The
classification extension (output parameter ``classification: k``) turns it into
BYTES ``[N, k]`` holding ``"score:index:label"``, highest score first.

Binary tensor data extension: the body is the JSON request followed by the inputs'
bytes in input order, ``Inference-Header-Content-Length`` gives the JSON's length and
each binary input says its size in ``parameters.binary_data_size``. A binary answer
is built the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from fastapi import Request, Response

from app.core.config import Settings
from app.core.errors import ModelNotReadyError
from app.core.gate import Upload
from app.core.service import Classification, InferenceService
from app.protocols.common import (
    MOST_RANK,
    TensorData,
    bad_request,
    check_count,
    check_model_name,
    classify_input,
    decode_all,
    decode_b64,
    header_int,
    pack_numbers,
    pixel_tensor,
    probability_table,
    read_body,
)
from app.protocols.numbers import most_values, parse_json
from app.protocols.oip.schemas import (
    EXTENSIONS,
    IMAGE_BYTES,
    IMAGES,
    PROBABILITIES,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    RequestInput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
Input = list[bytes] | list[memoryview] | np.ndarray  # image files, or pixels


@dataclass(frozen=True)
class OutputChoice:
    """How to answer: binary or JSON, probabilities or the top ``classes`` (0: off)."""

    binary: bool
    classes: int


def server_metadata(version: str) -> ServerMetadata:
    """The answer of GET /v2."""
    return ServerMetadata(name="catdog", version=version, extensions=EXTENSIONS)


def model_metadata(service: InferenceService, name: str, version: str | None) -> ModelMetadata:
    """The answer of GET /v2/models/{name}[/versions/{version}]."""
    check_model_name(service, name)
    model = service.model_for(version)
    height, width = model.contract.image_size
    return ModelMetadata(
        name=name,
        versions=[m.version for m in service.registry.loaded],
        platform=model.runtime_name,
        inputs=[
            TensorMetadata(name=IMAGE_BYTES, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=IMAGES, datatype="FP32", shape=[-1, height, width, 3]),
        ],
        outputs=[
            TensorMetadata(
                name=PROBABILITIES, datatype="FP32", shape=[-1, len(model.contract.class_names)]
            )
        ],
    )


def model_ready(service: InferenceService, name: str, version: str | None) -> ModelReady:
    """Ready when the version is loaded and the service accepts work; else 404 or 503."""
    check_model_name(service, name)
    service.model_for(version)  # 404 if not loaded, 503 before the first load
    if not service.ready:
        raise ModelNotReadyError("the service is not accepting requests")
    return ModelReady(name=name, ready=True)


async def infer(
    service: InferenceService,
    name: str,
    version: str | None,
    request: Request,
    upload: Upload | None,
) -> Response:
    """One inference request, from the body to the answer (see the module docstring)."""
    check_model_name(service, name)
    model = service.model_for(version)  # 404 before reading the body
    infer_request, binary = await read_request(
        service,
        await read_body(request),
        request.headers.get(HEADER_LENGTH),
        most_values(service.settings, model.contract),
    )
    output = output_choice(infer_request, len(model.contract.class_names))
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


def output_choice(request: InferRequest, class_count: int) -> OutputChoice:
    """What the request asks of the output ``probabilities``."""
    binary = request.parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise bad_request("parameter binary_data_output must be true or false")
    outputs = request.outputs or []
    unknown = [o.name for o in outputs if o.name != PROBABILITIES]
    if unknown or len(outputs) > 1:
        raise bad_request(f"outputs {unknown or len(outputs)}: the only output is {PROBABILITIES}")
    if not outputs:
        return OutputChoice(binary, 0)
    parameters = outputs[0].parameters
    binary = parameters.get("binary_data", binary)
    classes = parameters.get("classification", 0)
    if not isinstance(binary, bool):
        raise bad_request("output parameter binary_data must be true or false")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise bad_request("output parameter classification must be a whole number >= 0")
    return OutputChoice(binary, min(classes, class_count))


def model_input(request: InferRequest, binary: memoryview, settings: Settings) -> Input:
    """The request's one input, decoded from JSON or binary tensor data."""
    tensor = only_input(request)
    return decode_input(tensor, _binary_part(tensor, binary), settings)


def only_input(request: InferRequest) -> RequestInput:
    """The request's one input, if its name, datatype and shape are the model's."""
    if len(request.inputs) != 1:
        raise bad_request(f"give exactly one input, {IMAGE_BYTES} or {IMAGES}")
    tensor = request.inputs[0]
    expected = {IMAGE_BYTES: "BYTES", IMAGES: "FP32"}.get(tensor.name)
    if expected is None:
        raise bad_request(f"unknown input {tensor.name!r}; inputs: {IMAGE_BYTES}, {IMAGES}")
    if tensor.datatype != expected:
        raise bad_request(f"input {tensor.name} is {expected}, not {tensor.datatype}")
    if len(tensor.shape) > MOST_RANK:  # numpy refuses more than 64 (was a 500)
        raise bad_request(
            f"input {tensor.name}: {len(tensor.shape)} dimensions; inputs have at most {MOST_RANK}"
        )
    if any(size < 0 for size in tensor.shape) or not tensor.shape:
        raise bad_request(f"input {tensor.name}: shape {tensor.shape} is not a tensor's shape")
    return tensor


def decode_input(
    tensor: RequestInput,
    raw: memoryview | None,
    settings: Settings,
    files: list[bytes] | None = None,
) -> Input:
    """An input checked by ``only_input``, from its raw bytes (``raw``), its image files
    as they are (``files``, gRPC's ``bytes_contents``) or its JSON ``data``: image files,
    or pixels as a float32 array."""
    if tensor.name == IMAGE_BYTES:
        return _image_files(tensor, raw, settings, files)
    return pixel_tensor(tensor.shape, f"input {IMAGES}", settings, raw, tensor.data)


def answer_tensor(
    results: list[Classification], output: OutputChoice
) -> tuple[str, list[int], np.ndarray | list[bytes]]:
    """The output ``probabilities`` of REST and gRPC alike: its datatype, shape and
    elements, float32 [N, C] or, with the classification extension, the strings
    ``"score:index:label"`` of the ``output.classes`` highest, highest first."""
    table = probability_table(results)
    if not output.classes:
        return "FP32", list(table.shape), table
    classes = list(results[0].probabilities)
    strings = []
    for row in table:
        order = sorted(range(len(classes)), key=lambda i: -row[i])[: output.classes]
        strings += [f"{float(row[i])}:{i}:{classes[i]}".encode() for i in order]
    return "BYTES", [len(results), output.classes], strings


def raw_tensor(elements: np.ndarray | list[bytes]) -> bytes:
    """Elements as binary tensor data: little-endian float32, or each string after its
    length (4 bytes, little-endian)."""
    if isinstance(elements, np.ndarray):
        return elements.astype("<f4").tobytes()
    return b"".join(struct.pack("<I", len(s)) + s for s in elements)


def encode(
    request: InferRequest, results: list[Classification], name: str, output: OutputChoice
) -> Response:
    """The answer: JSON, or JSON followed by binary tensor data."""
    datatype, shape, elements = answer_tensor(results, output)
    tensor = ResponseOutput(name=PROBABILITIES, datatype=datatype, shape=shape)
    raw = raw_tensor(elements) if output.binary else b""
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


def _image_files(
    tensor: RequestInput, raw: memoryview | None, settings: Settings, given: list[bytes] | None
) -> list[bytes] | list[memoryview]:
    count = tensor.shape[0]
    if tensor.shape not in ([count], [count, 1]):
        raise bad_request(f"input {IMAGE_BYTES}: shape {tensor.shape}, expected [N] or [N, 1]")
    check_count(count, settings)
    content_type = tensor.parameters.get("content_type")
    if content_type not in (None, "base64"):
        raise bad_request(f"content_type {content_type!r}: image files are sent as base64")
    if raw is None and given is None:
        elements = _strings(tensor.data)
        tensor.data = None  # the texts are only held by ``elements``, freed as decoded
        files = decode_all(elements, f"{IMAGE_BYTES} element")
    else:
        files = _deserialize_bytes(raw) if given is None else given
        if content_type == "base64":
            files = [decode_b64(str(f, "ascii", "replace"), IMAGE_BYTES) for f in files]
    if len(files) != count:
        raise bad_request(f"input {IMAGE_BYTES}: shape {tensor.shape} but {len(files)} elements")
    return files


def _strings(data: TensorData | np.ndarray | None) -> list[str]:
    if isinstance(data, np.ndarray):  # numbers, packed by the parsing worker
        raise bad_request(f"input {IMAGE_BYTES}: elements must be base64 strings")
    flat: list[str] = []
    for element in data or []:
        if isinstance(element, list):
            flat.extend(_strings(element))
        elif isinstance(element, str):
            flat.append(element)
        else:
            raise bad_request(f"input {IMAGE_BYTES}: elements must be base64 strings")
    return flat


def _deserialize_bytes(raw: memoryview) -> list[memoryview]:
    """BYTES binary tensor data: each element is a 4-byte little-endian length, then bytes.
    The elements are views into ``raw``: a batch of files is not copied whole again."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad_request(f"input {IMAGE_BYTES}: binary data ends inside a length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad_request(f"input {IMAGE_BYTES}: element of {length} bytes overruns the data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements
