"""TensorFlow Serving's REST API: ``/metadata``, ``:predict`` (rows or columns) and
``:classify`` of the signature ``serving_default``, whose inputs are ``image_bytes``
(``{"b64": ...}`` files) or ``images`` (pixels), as docs/protocols.md describes them; its
model status is ``app/api/routes.py``'s.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.schemas import PROTOCOL_ERRORS, VersionDep, request_body, versioned
from app.core.gate import Upload, UploadDep
from app.core.service import Classification, InferenceService, ServiceDep
from app.protocols.messages import TFSERVING
from app.protocols.numbers import (
    JsonTensor,
    OrArray,
    TensorData,
    as_pixels,
    decode_all,
    most_values,
    pack_numbers,
    pack_values,
    parse_json,
    read_body,
)
from app.protocols.oip.codec import check_model_name, classify_input
from catdog.contract import ModelContract

SIGNATURE = "serving_default"
IMAGE_BYTES = "image_bytes"
IMAGES = "images"
PROBABILITIES = "probabilities"
OUTPUT = "StatefulPartitionedCall:0"  # the output's name in a SavedModel's signature
T = TFSERVING.messages
DATA_TYPES = T["TensorProto"].DESCRIPTOR.fields_by_name["dtype"].enum_type.values_by_name
DT_FLOAT, DT_STRING = DATA_TYPES["DT_FLOAT"].number, DATA_TYPES["DT_STRING"].number
router = APIRouter(tags=["tf serving"])


class B64(BaseModel):
    """Binary data (an image file) in JSON."""

    model_config = ConfigDict(extra="forbid")
    b64: str = Field(examples=["/9j/4AAQSkZJRgABAQ..."], description="standard base64")


Value = B64 | JsonTensor
Instance = B64 | JsonTensor | dict[str, Value]
Feature = B64 | float | str | list[float] | list[str]


class PredictRequest(BaseModel):
    """POST /v1/models/{name}[/versions/{version}]:predict."""

    signature_name: str | None = Field(None, examples=[SIGNATURE])
    instances: Annotated[list[Instance] | None, OrArray] = Field(
        None, examples=[[{"b64": "/9j/4AAQSkZJRgABAQ..."}]], fail_fast=True
    )
    inputs: JsonTensor | dict[str, JsonTensor] | None = Field(
        None, description='images [{"b64": ...}, ...] or a pixel tensor, or an object naming one'
    )


class PredictResponse(BaseModel):
    """``predictions`` for a row request, ``outputs`` for a columnar one: [N, C]."""

    predictions: list[list[float]] | None = Field(None, examples=[[[0.97, 0.03]]])
    outputs: list[list[float]] | None = None


class ClassifyRequest(BaseModel):
    """POST /v1/models/{name}[/versions/{version}]:classify."""

    signature_name: str | None = None
    context: dict[str, Feature] | None = None
    examples: Annotated[list[dict[str, Feature]], Field(min_length=1, fail_fast=True)] = Field(
        examples=[[{"image_bytes": {"b64": "/9j/4AAQSkZJRgABAQ..."}}]]
    )


class ClassifyResponse(BaseModel):
    """Per example, ``[label, score]`` for every class, in the contract's order."""

    result: list[list[tuple[str, float]]] = Field(examples=[[[["cat", 0.97], ["dog", 0.03]]]])


R = TypeVar("R", PredictRequest, ClassifyRequest)


def signature_map(contract: ModelContract) -> Message:
    """The signature ``serving_default`` of a version, as a ``SignatureDefMap``."""
    height, width = contract.image_size
    signature = T["SignatureDef"](method_name="tensorflow/serving/predict")
    for tensors, key, dtype, sizes, name in (
        (signature.inputs, IMAGE_BYTES, DT_STRING, [-1], f"{SIGNATURE}_{IMAGE_BYTES}:0"),
        (signature.inputs, IMAGES, DT_FLOAT, [-1, height, width, 3], f"{SIGNATURE}_{IMAGES}:0"),
        (signature.outputs, PROBABILITIES, DT_FLOAT, [-1, len(contract.class_names)], OUTPUT),
    ):
        tensors[key].name, tensors[key].dtype = name, dtype
        tensors[key].tensor_shape.dim.extend(T["TensorShapeProto.Dim"](size=s) for s in sizes)
    return T["SignatureDefMap"](signature_def={SIGNATURE: signature})


@versioned(
    router,
    "GET",
    "/v1/models/{name}{at}/metadata",
    responses={**PROTOCOL_ERRORS, 200: {"description": "TF Serving's GetModelMetadataResponse"}},
)
async def metadata(name: str, service: ServiceDep, version: VersionDep) -> dict[str, Any]:
    """The signature of the highest loaded version, or of the one named."""
    check_model_name(service, name)
    model = service.model_for(version)
    signatures = json_format.MessageToDict(
        signature_map(model.contract),
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
    )
    spec = {"name": name, "signature_name": "", "version": model.version}
    return {"model_spec": spec, "metadata": {"signature_def": signatures}}


@versioned(
    router,
    "POST",
    "/v1/models/{name}{at}:predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=PROTOCOL_ERRORS,
    openapi_extra=request_body(PredictRequest, "instances (rows) or inputs (columnar)"),
)
async def predict(
    name: str, http: Request, service: ServiceDep, upload: UploadDep, version: VersionDep
) -> PredictResponse:
    """Probabilities [N, C] for images or pixels, with the highest loaded version or the
    one named."""
    request = await _read(PredictRequest, service, name, version, http)
    if (request.instances is None) == (request.inputs is None):
        raise HTTPException(400, 'give either "instances" (rows) or "inputs" (columnar)')
    rows = request.instances is not None
    given = _from_rows(request.instances) if rows else _from_columns(request.inputs)
    results = await _classify(service, given, version, upload)
    table = [list(r.probabilities.values()) for r in results]
    return PredictResponse(predictions=table) if rows else PredictResponse(outputs=table)


@versioned(
    router,
    "POST",
    "/v1/models/{name}{at}:classify",
    response_model=ClassifyResponse,
    responses=PROTOCOL_ERRORS,
    openapi_extra=request_body(ClassifyRequest, "examples, one image each"),
)
async def classify(
    name: str, http: Request, service: ServiceDep, upload: UploadDep, version: VersionDep
) -> ClassifyResponse:
    """[[label, score], ...] per image, with the highest loaded version or the one named."""
    request = await _read(ClassifyRequest, service, name, version, http)
    if any(isinstance(v, B64) for v in (request.context or {}).values()):
        raise HTTPException(400, "context holds an image: put one image in each example")
    images = []
    for position, example in enumerate(request.examples):
        found = [v for v in example.values() if isinstance(v, B64)]
        if len(found) != 1:
            raise HTTPException(400, f"example {position}: give one image as {{'b64': ...}}")
        images.append(found[0])
    results = await _classify(service, images, version, upload)
    return ClassifyResponse(result=[list(r.probabilities.items()) for r in results])


async def _read(
    schema: type[R], service: InferenceService, name: str, version: str | None, http: Request
) -> R:
    """The body as ``schema``, after its model and version are checked (404 unread)."""
    check_model_name(service, name)
    model = service.model_for(version)
    most = most_values(service.settings, model.contract)
    return await parse_json(service, schema, await read_body(http), most, _pack)


def check_signature(name: str | None) -> None:
    """400 unless ``name`` is empty or ``serving_default``."""
    if name not in (None, "", SIGNATURE):
        raise HTTPException(400, f"no signature {name!r}; the only one is {SIGNATURE!r}")


def _pack(request: BaseModel) -> None:
    """Where the body was parsed (``parse_json``): each number tensor as an array (all
    rows as one if all are numbers), then the signature (a long name stays there)."""
    if isinstance(request, ClassifyRequest):
        for features in [request.context or {}, *request.examples]:
            pack_values(features, "feature {key}")
    elif isinstance(request, PredictRequest):
        rows = request.instances
        if rows is not None:
            request.instances = rows = pack_numbers(rows, "instances")  # type: ignore[assignment]
        if isinstance(rows, list):
            for position, row in enumerate(rows):
                if isinstance(row, dict):
                    pack_values(row, "instances")
                elif isinstance(row, list):
                    rows[position] = pack_numbers(row, "instances")  # type: ignore[index]
        inputs = request.inputs
        if isinstance(inputs, dict):
            pack_values(inputs, "inputs")
        elif inputs is not None:
            request.inputs = pack_numbers(inputs, "inputs")  # type: ignore[assignment]
    check_signature(getattr(request, "signature_name", None))


def _from_rows(
    instances: list[B64 | TensorData | dict[str, B64 | TensorData]] | np.ndarray,
) -> list[B64] | np.ndarray:
    """Row form: images, tensors, or objects naming one input (all rows alike)."""
    if isinstance(instances, np.ndarray):
        return instances
    if not instances:
        raise HTTPException(400, "instances is empty: give one instance per image")
    if all(isinstance(i, dict) for i in instances):
        names = {key for i in instances if isinstance(i, dict) for key in i}
        if len(names) != 1 or not names <= {IMAGE_BYTES, IMAGES}:
            raise HTTPException(
                400, f"instances name {sorted(names)}; give one of {IMAGE_BYTES}, {IMAGES}"
            )
        [input_name] = names
        instances = [i[input_name] for i in instances if isinstance(i, dict)]
        return _as_named(input_name, _from_rows(instances))
    if all(isinstance(i, B64) for i in instances):
        return [i for i in instances if isinstance(i, B64)]
    if all(isinstance(i, (list, np.ndarray)) for i in instances):
        return as_pixels([i for i in instances if isinstance(i, (list, np.ndarray))], "instances")
    raise HTTPException(400, 'instances must all be images {"b64": ...} or all be pixel tensors')


def _from_columns(
    inputs: TensorData | dict[str, TensorData | np.ndarray] | np.ndarray | None,
) -> list[B64] | np.ndarray:
    """Columnar form: the list of images or the tensor, or an object naming one input."""
    if isinstance(inputs, dict):
        if len(inputs) != 1 or not set(inputs) <= {IMAGE_BYTES, IMAGES}:
            raise HTTPException(
                400, f"inputs name {sorted(inputs)}; give one of {IMAGE_BYTES}, {IMAGES}"
            )
        [(input_name, tensor)] = inputs.items()
        return _as_named(input_name, _from_columns(tensor))
    if isinstance(inputs, np.ndarray):
        return inputs
    items = inputs or []
    objects = [i for i in items if isinstance(i, dict)]
    if objects and len(objects) == len(items):
        return [_image(i, position) for position, i in enumerate(objects)]
    if objects:
        raise HTTPException(400, 'inputs must all be images {"b64": ...} or be one pixel tensor')
    return as_pixels(items, "inputs")


def _as_named(input_name: str, given: list[B64] | np.ndarray) -> list[B64] | np.ndarray:
    """``given`` if it is of the type of the input it was sent as; 400 otherwise."""
    if input_name == IMAGE_BYTES and isinstance(given, np.ndarray):
        raise HTTPException(
            400, f'input {IMAGE_BYTES} takes images as {{"b64": ...}}; send pixels as {IMAGES}'
        )
    if input_name == IMAGES and not isinstance(given, np.ndarray):
        raise HTTPException(
            400, f'input {IMAGES} takes pixels; send images {{"b64": ...}} as {IMAGE_BYTES}'
        )
    return given


def _image(item: dict[str, Any], position: int) -> B64:
    """One ``{"b64": ...}`` of a columnar list (untyped: pydantic would report a pixel
    tensor's every number)."""
    try:
        return B64.model_validate(item)
    except ValidationError:
        raise HTTPException(400, f'inputs {position}: give an image as {{"b64": "..."}}') from None


async def _classify(
    service: InferenceService,
    given: list[B64] | np.ndarray,
    version: str | None,
    upload: Upload | None,
) -> list[Classification]:
    """Images (each text freed as decoded) or pixels through ``classify_input``."""
    if not isinstance(given, np.ndarray):
        texts = [image.b64 for image in given]
        for image in given:
            image.b64 = ""
        given = decode_all(texts, "image")
    return await classify_input(service, given, version, upload)
