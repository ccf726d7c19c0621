"""The Open Inference Protocol v2: its tensors in and out, REST's and gRPC's alike, and
its gRPC calls (``InferenceServicer``, served by ``app.api.grpc_server``); the REST
routes and the binary tensor data extension are ``app/protocols/oip/routes.py``.

The model ``catdog`` has two inputs, of which a request gives exactly one:

* ``image_bytes``, BYTES, shape ``[N]`` (or ``[N, 1]``): encoded image files (JPEG,
  PNG, ...), decoded by the service's one preprocessing as for ``/predict``: in REST's
  JSON each element is the file in base64 (the input parameter ``content_type`` may say
  ``"base64"``, MLServer's name for this; no other value is accepted); as binary tensor
  data or gRPC's ``raw_input_contents``, the file's bytes after their length (4 bytes,
  little-endian: what tritonclient sends); in gRPC's ``bytes_contents``, the file.
* ``images``, FP32, shape ``[N, H, W, 3]``: pixels already scaled per the contract
  (``x/255``, in [0, 1]); JSON numbers (flat row-major, or nested), ``fp32_contents``,
  or little-endian float32. Shape and range are checked (400).

The output ``probabilities`` is FP32 ``[N, C]`` in the contract's class order; the
classification extension (output parameter ``classification: k``) turns it into BYTES
``[N, k]`` holding ``"score:index:label"``, highest score first. gRPC answers it in
``raw_output_contents`` when the request sent raw inputs, else in ``contents``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from app.core.config import Settings
from app.core.errors import ModelNotReadyError, answer_for
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
    pixel_tensor,
    probability_table,
)
from app.protocols.messages import INFERENCE, Call
from app.protocols.oip import schemas as oip_schemas
from app.protocols.oip.schemas import (
    IMAGE_BYTES,
    IMAGES,
    PROBABILITIES,
    InferRequest,
    ModelMetadata,
    ModelReady,
    RequestInput,
    TensorMetadata,
)

Input = list[bytes] | list[memoryview] | np.ndarray  # image files, or pixels
M = INFERENCE.messages
#: The field of ModelInferRequest that carries raw tensor data (7), read as views.
RAW_INPUT_CONTENTS = M["ModelInferRequest"].DESCRIPTOR.fields_by_name["raw_input_contents"].number


@dataclass(frozen=True)
class OutputChoice:
    """How to answer: binary or JSON, probabilities or the top ``classes`` (0: off)."""

    binary: bool
    classes: int


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


class InferenceServicer:
    """The calls of ``inference.GRPCInferenceService``."""

    def __init__(self, service: InferenceService, version: str) -> None:
        self.service = service
        self.version = version

    async def ServerLive(self, call: Call) -> Message:  # noqa: N802
        """Live while the process answers."""
        return M["ServerLiveResponse"](live=True)

    async def ServerReady(self, call: Call) -> Message:  # noqa: N802
        """Ready once a model is loaded and warmed up, until shutdown starts."""
        return M["ServerReadyResponse"](ready=self.service.ready)

    async def ModelReady(self, call: Call) -> Message:  # noqa: N802
        """Whether this version (empty: the highest) is loaded and the service accepts work;
        NOT_FOUND for another model's name."""
        request = call.message
        check_model_name(self.service, request.name)
        try:
            model_ready(self.service, request.name, request.version or None)
        except Exception as exc:
            answer = answer_for(exc, self.service.settings)
            if answer is None or answer.status not in (404, 503):
                raise
            return M["ModelReadyResponse"](ready=False)
        return M["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, call: Call) -> Message:  # noqa: N802
        """Name, version and extensions (binary tensor data is REST's; gRPC has raw bytes)."""
        return M["ServerMetadataResponse"](
            name="catdog", version=self.version, extensions=["classification"]
        )

    async def ModelMetadata(self, call: Call) -> Message:  # noqa: N802
        """Inputs, outputs, loaded versions and runtime, as ``GET /v2/models/{name}``."""
        request = call.message
        answer = model_metadata(self.service, request.name, request.version or None)
        return json_format.ParseDict(answer.model_dump(), M["ModelMetadataResponse"]())

    async def ModelInfer(self, call: Call) -> Message:  # noqa: N802
        """Classify image files or pixels: decode the request, predict, encode the answer
        (raw when the request was raw, else in ``contents``)."""
        request = call.message
        check_model_name(self.service, request.model_name)
        version = request.model_version or None
        model = self.service.model_for(version)  # NOT_FOUND before any decoding
        infer_request, given = self.decode_request(call)
        output = output_choice(infer_request, len(model.contract.class_names))
        results = await classify_input(self.service, given, version, call.upload)
        response = M["ModelInferResponse"](
            model_name=request.model_name, model_version=results[0].model_version, id=request.id
        )
        datatype, shape, elements = answer_tensor(results, output)
        tensor = response.outputs.add(name=PROBABILITIES, datatype=datatype, shape=shape)
        if call.raws:
            response.raw_output_contents.append(raw_tensor(elements))
        elif isinstance(elements, np.ndarray):
            tensor.contents.fp32_contents.extend(elements.ravel().tolist())
        else:
            tensor.contents.bytes_contents.extend(elements)
        return response

    def decode_request(self, call: Call) -> tuple[oip_schemas.InferRequest, Input]:
        """The request as REST's ``InferRequest`` (without its data), and its one input,
        checked and decoded as REST's (``only_input``, ``decode_input``)."""
        request, raws = call.message, call.raws
        if len(request.inputs) != 1:
            raise bad_request(f"give exactly one input, {IMAGE_BYTES} or {IMAGES}")
        infer_request = oip_schemas.InferRequest(
            id=request.id or None,
            parameters=parameters(request.parameters),
            inputs=[
                oip_schemas.RequestInput(
                    name=t.name,
                    shape=list(t.shape),
                    datatype=t.datatype,
                    parameters=parameters(t.parameters),
                )
                for t in request.inputs
            ],
            outputs=[
                oip_schemas.RequestOutput(name=o.name, parameters=parameters(o.parameters))
                for o in request.outputs
            ]
            or None,
        )
        tensor = only_input(infer_request)
        message = request.inputs[0]
        settings = self.service.settings
        if raws:
            if len(raws) != 1:
                raise bad_request(f"{len(raws)} raw_input_contents for 1 input")
            if message.HasField("contents"):
                raise bad_request(f"input {tensor.name} has both contents and raw_input_contents")
            return infer_request, decode_input(tensor, raws[0], settings)
        contents = message.contents
        used = [f.name for f, _ in contents.ListFields()]
        wanted = "bytes_contents" if tensor.name == IMAGE_BYTES else "fp32_contents"
        if used and used != [wanted]:
            raise bad_request(
                f"input {tensor.name} is {tensor.datatype}: its elements go in {wanted} "
                f"or raw_input_contents, not {', '.join(used)}"
            )
        if tensor.name == IMAGE_BYTES:
            files = list(contents.bytes_contents)
            return infer_request, decode_input(tensor, None, settings, files)
        tensor.data = np.array(contents.fp32_contents, np.float32)  # type: ignore[assignment]
        return infer_request, decode_input(tensor, None, settings)


def parameters(given: Mapping[str, Message]) -> oip_schemas.Parameters:
    """A ``map<string, InferParameter>`` as REST's parameters (bool, int, float, str)."""
    found: oip_schemas.Parameters = {}
    for key, value in given.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            found[key] = getattr(value, choice)
    return found
