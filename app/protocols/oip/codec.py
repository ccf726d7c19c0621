"""The Open Inference Protocol v2: its tensors (REST's and gRPC's), its gRPC calls, and
the entry every protocol shares (the model's name, the image limits, ``classify_input``).
Inputs ``image_bytes`` (BYTES: image files) or ``images`` (FP32 pixels), output
``probabilities`` or its top classes, as docs/protocols.md describes them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException
from google.protobuf import json_format
from google.protobuf.message import Message

from app.core.config import Settings
from app.core.errors import ModelNotReadyError, VersionNotFoundError
from app.core.gate import Upload
from app.core.service import Classification, InferenceService
from app.protocols.messages import INFERENCE, Call
from app.protocols.numbers import MOST_RANK, TensorData, as_pixels, decode_all, decode_b64
from app.protocols.oip.schemas import (
    IMAGE_BYTES,
    IMAGES,
    PROBABILITIES,
    InferRequest,
    ModelMetadata,
    Parameters,
    RequestInput,
    RequestOutput,
    TensorMetadata,
)

Input = list[bytes] | list[memoryview] | np.ndarray  # image files, or pixels
M = INFERENCE.messages
RAW_INPUT_CONTENTS = M["ModelInferRequest"].DESCRIPTOR.fields_by_name["raw_input_contents"].number


def check_model_name(service: InferenceService, name: str) -> None:
    """404 unless ``name`` is the served model."""
    served = service.settings.model_name
    if name != served:
        raise HTTPException(404, f"no model named {name!r}; this service serves {served!r}")


def check_count(count: int, settings: Settings) -> None:
    """400 for no image, 413 for more than ``max_files_per_request``."""
    if count == 0:
        raise HTTPException(400, "no images in the request")
    if count > settings.max_files_per_request:
        limit = settings.max_files_per_request
        raise HTTPException(413, f"{count} images; at most {limit} per request")


async def classify_input(
    service: InferenceService, given: Input, version: str | None, upload: Upload | None
) -> list[Classification]:
    """Every protocol's way to its answer: files or pixels within the limits of
    ``/predict/batch``."""
    settings = service.settings
    pixels = isinstance(given, np.ndarray)
    check_count(len(given) if not pixels or given.ndim else 0, settings)  # 0-d: no images
    for position, data in enumerate([] if pixels else given):
        if not data:
            raise HTTPException(400, f"image {position} is empty")
        if len(data) > settings.max_upload_bytes:
            limit = settings.max_upload_bytes
            raise HTTPException(413, f"image {position} exceeds the upload limit of {limit} bytes")
    return await service.classify(given, upload=upload, version=version)


def probability_table(results: list[Classification]) -> np.ndarray:
    """The output ``probabilities``: float32 [N, C], classes in the contract's order."""
    return np.array([list(r.probabilities.values()) for r in results], np.float32)


def pixel_tensor(
    shape: list[int],
    what: str,
    settings: Settings,
    raw: bytes | memoryview | None = None,
    values: np.ndarray | TensorData | None = None,
) -> np.ndarray:
    """Float32 pixels of ``shape`` (its first size the image count) from little-endian
    float32 ``raw`` or ``values``; 400 when they do not fill it."""
    check_count(shape[0], settings)
    count = math.prod(shape)
    if count == 0:  # numpy refuses such a shape when its other sizes are huge
        raise HTTPException(400, f"{what}: shape {shape} holds no pixels")
    if raw is not None:
        if len(raw) != 4 * count:
            raise HTTPException(400, f"{what}: shape {shape} needs {4 * count} bytes")
        values = np.frombuffer(raw, dtype="<f4")
    elif not isinstance(values, np.ndarray):
        values = as_pixels([] if values is None else values, what)
    if values.size != count:
        raise HTTPException(400, f"{what}: shape {shape} but {values.size} elements")
    return values.reshape(shape).astype(np.float32, copy=False)


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
    classes = len(model.contract.class_names)
    return ModelMetadata(
        name=name,
        versions=[m.version for m in service.registry.loaded],
        platform=model.runtime_name,
        inputs=[
            TensorMetadata(name=IMAGE_BYTES, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=IMAGES, datatype="FP32", shape=[-1, height, width, 3]),
        ],
        outputs=[TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, classes])],
    )


def output_choice(request: InferRequest, class_count: int) -> OutputChoice:
    """What the request asks of the output ``probabilities``."""
    binary = request.parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise HTTPException(400, "parameter binary_data_output must be true or false")
    outputs = request.outputs or []
    unknown = [o.name for o in outputs if o.name != PROBABILITIES]
    if unknown or len(outputs) > 1:
        raise HTTPException(
            400, f"outputs {unknown or len(outputs)}: the only output is {PROBABILITIES}"
        )
    if not outputs:
        return OutputChoice(binary, 0)
    parameters = outputs[0].parameters
    binary = parameters.get("binary_data", binary)
    classes = parameters.get("classification", 0)
    if not isinstance(binary, bool):
        raise HTTPException(400, "output parameter binary_data must be true or false")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise HTTPException(400, "output parameter classification must be a whole number >= 0")
    return OutputChoice(binary, min(classes, class_count))


def only_input(request: InferRequest) -> RequestInput:
    """The request's one input, if its name, datatype and shape are the model's."""
    if len(request.inputs) != 1:
        raise HTTPException(400, f"give exactly one input, {IMAGE_BYTES} or {IMAGES}")
    tensor = request.inputs[0]
    name, shape = tensor.name, tensor.shape
    expected = {IMAGE_BYTES: "BYTES", IMAGES: "FP32"}.get(name)
    if expected is None:
        raise HTTPException(400, f"unknown input {name!r}; inputs: {IMAGE_BYTES}, {IMAGES}")
    if tensor.datatype != expected:
        raise HTTPException(400, f"input {name} is {expected}, not {tensor.datatype}")
    if len(shape) > MOST_RANK:  # numpy refuses more than 64 (was a 500)
        raise HTTPException(
            400, f"input {name}: {len(shape)} dimensions; inputs have at most {MOST_RANK}"
        )
    if any(size < 0 for size in shape) or not shape:
        raise HTTPException(400, f"input {name}: shape {shape} is not a tensor's shape")
    return tensor


def decode_input(
    tensor: RequestInput, raw: memoryview | None, settings: Settings, files: list | None = None
) -> Input:
    """An input checked by ``only_input`` from its raw bytes, its files as they are
    (gRPC's ``bytes_contents``) or its JSON ``data``: image files, or float32 pixels."""
    if tensor.name == IMAGES:
        return pixel_tensor(tensor.shape, f"input {IMAGES}", settings, raw, tensor.data)
    count = tensor.shape[0]
    if tensor.shape not in ([count], [count, 1]):
        raise HTTPException(
            400, f"input {IMAGE_BYTES}: shape {tensor.shape}, expected [N] or [N, 1]"
        )
    check_count(count, settings)
    content_type = tensor.parameters.get("content_type")
    if content_type not in (None, "base64"):
        raise HTTPException(400, f"content_type {content_type!r}: image files are sent as base64")
    if raw is None and files is None:
        texts = _strings(tensor.data)
        tensor.data = None  # the texts are only held by ``texts``, freed as decoded
        files = decode_all(texts, f"{IMAGE_BYTES} element")
    else:
        files = _deserialize_bytes(raw) if files is None else files
        if content_type == "base64":
            files = [decode_b64(str(f, "ascii", "replace"), IMAGE_BYTES) for f in files]
    if len(files) != count:
        raise HTTPException(
            400, f"input {IMAGE_BYTES}: shape {tensor.shape} but {len(files)} elements"
        )
    return files


def _strings(data: TensorData | np.ndarray | None) -> list[str]:
    """The strings of a nested JSON list; 400 for anything else."""
    if isinstance(data, np.ndarray):  # numbers, packed by the parsing
        raise HTTPException(400, f"input {IMAGE_BYTES}: elements must be base64 strings")
    flat: list[str] = []
    for element in data or []:
        if isinstance(element, list):
            flat.extend(_strings(element))
        elif isinstance(element, str):
            flat.append(element)
        else:
            raise HTTPException(400, f"input {IMAGE_BYTES}: elements must be base64 strings")
    return flat


def _deserialize_bytes(raw: memoryview) -> list[memoryview]:
    """BYTES raw data: each element's 4-byte little-endian length, then the element (a
    view into ``raw``: the files are not copied)."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise HTTPException(400, f"input {IMAGE_BYTES}: binary data ends inside a length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise HTTPException(
                400, f"input {IMAGE_BYTES}: element of {length} bytes overruns the data"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def answer_tensor(
    results: list[Classification], output: OutputChoice
) -> tuple[str, list[int], np.ndarray | list[bytes]]:
    """The output's datatype, shape and elements: float32 [N, C], or with
    ``output.classes`` the strings ``"score:index:label"`` of the highest, highest first."""
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
    """Elements as raw data: little-endian float32, or each string after its length."""
    if isinstance(elements, np.ndarray):
        return elements.astype("<f4").tobytes()
    return b"".join(struct.pack("<I", len(s)) + s for s in elements)


def parameters(given: Mapping[str, Message]) -> Parameters:
    """A ``map<string, InferParameter>`` as REST's parameters (bool, int, float, str)."""
    found: Parameters = {}
    for key, value in given.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            found[key] = getattr(value, choice)
    return found


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
        """Whether the version (empty: the highest) is loaded and the service accepts
        work; NOT_FOUND for another model's name."""
        check_model_name(self.service, call.message.name)
        try:
            self.service.model_for(call.message.version or None)
        except (VersionNotFoundError, ModelNotReadyError):
            return M["ModelReadyResponse"](ready=False)
        return M["ModelReadyResponse"](ready=self.service.ready)

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
        """Classify image files or pixels; raw answers to raw requests."""
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

    def decode_request(self, call: Call) -> tuple[InferRequest, Input]:
        """The request as REST's ``InferRequest`` (without data), and its one input,
        checked and decoded as REST's."""
        request, raws = call.message, call.raws
        if len(request.inputs) != 1:
            raise HTTPException(400, f"give exactly one input, {IMAGE_BYTES} or {IMAGES}")
        infer_request = InferRequest(
            id=request.id or None,
            parameters=parameters(request.parameters),
            inputs=[
                RequestInput(
                    name=t.name,
                    shape=list(t.shape),
                    datatype=t.datatype,
                    parameters=parameters(t.parameters),
                )
                for t in request.inputs
            ],
            outputs=[
                RequestOutput(name=o.name, parameters=parameters(o.parameters))
                for o in request.outputs
            ]
            or None,
        )
        tensor = only_input(infer_request)
        settings = self.service.settings
        if raws:
            if len(raws) != 1:
                raise HTTPException(400, f"{len(raws)} raw_input_contents for 1 input")
            if request.inputs[0].HasField("contents"):
                raise HTTPException(
                    400, f"input {tensor.name} has both contents and raw_input_contents"
                )
            return infer_request, decode_input(tensor, raws[0], settings)
        contents = request.inputs[0].contents
        used = [f.name for f, _ in contents.ListFields()]
        wanted = "bytes_contents" if tensor.name == IMAGE_BYTES else "fp32_contents"
        if used and used != [wanted]:
            raise HTTPException(
                400,
                f"input {tensor.name} is {tensor.datatype}: its elements go in {wanted} "
                f"or raw_input_contents, not {', '.join(used)}",
            )
        if tensor.name == IMAGE_BYTES:
            return infer_request, decode_input(
                tensor, None, settings, list(contents.bytes_contents)
            )
        tensor.data = np.array(contents.fp32_contents, np.float32)  # type: ignore[assignment]
        return infer_request, decode_input(tensor, None, settings)
