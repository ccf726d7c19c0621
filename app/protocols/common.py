"""What the Open Inference Protocol and TF Serving's REST API share.

* Bodies are read by the routes themselves (``parse_json``), whatever their
  Content-Type: tritonclient sends none, ``curl -d`` sends a form type, and the
  binary tensor data extension puts raw bytes after the JSON. A body that does not
  validate is a 400 naming the first problems (``app.api.schemas.request_body``
  documents such a body in the OpenAPI page).
* Images travel as standard (or URL-safe) base64 in JSON (``decode_b64``); they
  obey the limits of ``/predict/batch``: at most ``max_files_per_request`` per
  request and ``max_upload_bytes`` each, none empty (``check_images``).
* Memory: a body is read into one buffer (``read_body``) and dropped once parsed;
  each base64 text is dropped once decoded (``decode_all``): a JSON request peaks
  while its body and its texts are both held, at most 2.8 bytes per byte of its
  files (``bench/results/upload-memory.json``).
* Tensors given as JSON numbers become float32 arrays (``as_pixels``); their shape
  and values are checked against the version's contract by the service. The body is
  parsed once, large tensors straight into arrays (``app.protocols.numbers``,
  ``read_json``);
  any other body costs pydantic a Python object per number, seconds of CPU holding
  the GIL and several times the body in memory (``bench/results/json-offload.md``).
  So a body is refused before parsing when its commas show more values than
  ``max_json_images`` images hold, or its brackets more arrays (``check_values``),
  and a body of at least ``json_offload_values`` values and arrays is parsed in a
  worker process, which sends back its tensors as arrays
  (``parse_json``, ``app.core.offload``): the event loop keeps serving meanwhile.
  What is left besides those arrays (names, shapes, images' base64 texts) is small
  in a legal request; more than ``most_leftovers`` such values is a 413
  (``check_leftovers``), decided where the body was parsed, so that no worker sends
  back millions of nulls or empty lists for the server to unpickle.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, TypeVar

import numpy as np
from fastapi import HTTPException, Request
from pydantic import (
    BaseModel,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from app.core.config import Settings
from app.core.offload import OffloadBrokenError
from app.core.service import InferenceService
from app.protocols import numbers
from catdog.contract import ModelContract

#: A JSON tensor: numbers or strings, flat (row-major) or nested. Its elements are
#: checked where it is used (``as_pixels``, the base64 strings of images): a
#: recursive element type made pydantic take 6 s over the largest legal tensor.
TensorData = list[Any]
JSON_SLACK = 4096  # values of a legal body beside its tensor: keys, shape, parameters


def tensor(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """An array ``numbers.read`` made of a tensor as it is; anything else as the type says."""
    return value if isinstance(value, np.ndarray) else handler(value)


#: Marks a field where ``numbers.read`` may have put an array in place of a list.
OrArray = WrapValidator(tensor)  # its name shows in errors: "function-wrap[tensor()]"
JsonTensor = Annotated[
    TensorData,
    OrArray,
    WithJsonSchema(
        {
            "type": "array",
            "items": {},
            "description": "tensor elements: numbers or strings, flat (row-major) or nested",
        }
    ),
]
M = TypeVar("M", bound=BaseModel)


def header_int(value: str) -> int | None:
    """A header's non-negative integer: up to 18 ASCII digits, else None (``int`` raises on
    ``"²"`` and on more than 4,300 digits)."""
    return int(value) if len(value) <= 18 and value.isascii() and value.isdigit() else None


async def read_body(request: Request) -> bytearray:
    """The body in one buffer grown as it arrives, and not kept by the request.

    ``request.body()`` holds the chunks and their joined copy at once, then keeps the
    body for the request's whole life; the protocols parse it and let it go.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body


def bad_request(message: str) -> HTTPException:
    """400: the request is malformed for the protocol."""
    return HTTPException(400, message)


def most_values(settings: Settings, contract: ModelContract) -> int:
    """The most JSON values a legal body holds: ``max_json_images`` images of pixels (by
    default ``max_files_per_request``)."""
    height, width = contract.image_size
    return settings.json_images * height * width * 3 + JSON_SLACK


async def parse_json(
    service: InferenceService,
    model: type[M],
    body: bytes | bytearray,
    most: int,
    pack: Callable[[M], None],
) -> M:
    """``read_json``: 413 first, without parsing, when the body holds more than ``most``
    values (``check_values``). In a worker process when the body holds
    ``json_offload_values`` values or more, so that no Python object per number comes
    back; in place otherwise, with the same answers. 503 if the worker dies."""
    settings = service.settings
    counts = JsonCounts.of(body)
    check_values(counts, most)
    offload = service.offload
    reading = Reading(counts, pack, most_leftovers(settings), settings.json_fast_tensors)
    if not offload.enabled or sum(counts) < settings.json_offload_values:
        return read_json(model, body, reading)
    try:
        answer = await offload.run(parse_packed, model, body, reading)
    except OffloadBrokenError as exc:
        retry = str(service.settings.retry_after_s)
        raise HTTPException(503, f"{exc}; retry", headers={"Retry-After": retry}) from None
    service.metrics.json_offloaded.inc()
    if isinstance(answer, tuple):
        raise HTTPException(*answer)
    return answer


class Reading(NamedTuple):
    """How ``read_json`` reads a body: its counts, ``pack`` and limit."""

    counts: JsonCounts  # the body's
    pack: Callable[[Any], None]  # the protocol's: its number tensors as arrays
    leftovers: int  # values besides them (``check_leftovers``)
    fast: bool  # parse once, large number tensors straight into arrays (``numbers.read``)


def parse_packed(model: type[M], body: bytes | bytearray, reading: Reading) -> M | tuple[int, str]:
    """``read_json`` in a worker process; an HTTP error as (status, detail)."""
    try:
        return read_json(model, body, reading)
    except HTTPException as exc:
        return exc.status_code, str(exc.detail)


def read_json(model: type[M], body: bytes | bytearray, reading: Reading) -> M:
    """``parse_body``, ``pack`` and ``check_leftovers``, the body parsed once with its large
    tensors of numbers read straight into arrays (``app.protocols.numbers``). If those
    values do not validate, the body is parsed again as it came, so that its answer is
    the same. The caller has checked the body's counts (``check_values``)."""
    values = numbers.read(body) if reading.fast else None
    if values is not None:
        try:
            request = model.model_validate(values)
            reading.pack(request)
        except (ValidationError, HTTPException):
            request = None
        del values
        if request is not None:
            check_leftovers(request, reading.leftovers)
            return request
    request = parse_body(model, body)
    reading.pack(request)
    check_leftovers(request, reading.leftovers)
    return request


def parse_body(model: type[M], body: bytes | bytearray) -> M:
    """Validate a JSON body as ``model``; 400 naming the first problems."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
        ]
        raise bad_request("invalid request: " + "; ".join(problems)) from None


class JsonCounts(NamedTuple):
    """What a JSON body holds, counted on its bytes before parsing."""

    commas: int  # each value after the first of an array or object follows one
    containers: int  # arrays and objects: "[" and "{" (base64 has neither)

    @classmethod
    def of(cls, body: bytes | bytearray) -> JsonCounts:
        """The counts of ``body``."""
        return cls(body.count(b","), body.count(b"[") + body.count(b"{"))


def check_values(counts: JsonCounts, most: int) -> None:
    """413 when a JSON body's commas show more than ``most`` values, or it holds more
    than ``most // 2`` arrays and objects: a tensor of pixels has one array per pixel (3
    values) and a few per row, while empty arrays nested ~200 deep cost a Python object
    each for no comma at all."""
    advice = (
        "the images of pixels a request may send as JSON numbers; send images, or pixels "
        "as binary tensor data"
    )
    if counts.commas >= most:
        raise HTTPException(413, f"the JSON holds more than {most} values, more than {advice}")
    if counts.containers >= most // 2:
        raise HTTPException(
            413, f"the JSON holds more than {most // 2} arrays and objects, more than {advice}"
        )


def most_leftovers(settings: Settings) -> int:
    """The most values a legal request holds besides its number tensors: a few per image
    sent as base64 (the text, its key, its object) and the keys, names and shapes
    around them."""
    return JSON_SLACK + 4 * settings.max_files_per_request


def check_leftovers(request: BaseModel, most: int) -> None:
    """413 when ``request``, its number tensors packed into arrays, still holds more than
    ``most`` values (nulls, strings, empty lists, keys...): no legal request does, and
    each costs a Python object wherever the request goes. Stops counting at ``most``."""
    pending: list[object] = [request]
    seen = 0
    while pending:
        item = pending.pop()
        if isinstance(item, BaseModel):
            item = {**item.__dict__, **(item.model_extra or {})}
        if not isinstance(item, (dict, list)):
            continue
        seen += len(item) * (2 if isinstance(item, dict) else 1)  # keys count
        if seen > most:
            raise HTTPException(
                413,
                f"the JSON holds more than {most} values besides its tensors of numbers; "
                "images travel as base64 texts, pixels as numbers",
            )
        if isinstance(item, dict):
            pending.extend(item.values())
        else:
            pending.extend(item)


def check_model_name(service: InferenceService, name: str) -> None:
    """404 unless ``name`` is the served model."""
    served = service.settings.model_name
    if name != served:
        raise HTTPException(404, f"no model named {name!r}; this service serves {served!r}")


def decode_b64(text: str, what: str) -> bytes:
    """The bytes of a standard or URL-safe base64 string; 400 naming ``what`` otherwise."""
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(text, altchars=b"-_", validate=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"{what} is not valid base64: the standard or URL-safe alphabet, padded with = "
            "to a multiple of 4 characters"
        ) from None


def decode_all(texts: list[str], what: str) -> list[bytes]:
    """Decode every base64 text (``what`` names them in errors), emptying the list as it
    goes so that each text is freed once its bytes exist."""
    files = []
    for position in range(len(texts)):
        files.append(decode_b64(texts[position], f"{what} {position}"))
        texts[position] = ""
    return files


def check_count(count: int, settings: Settings) -> None:
    """400 for no image, 413 for more than ``max_files_per_request``."""
    if count == 0:
        raise bad_request("no images in the request")
    if count > settings.max_files_per_request:
        limit = settings.max_files_per_request
        raise HTTPException(413, f"{count} images; at most {limit} per request")


def check_images(files: list[bytes], settings: Settings) -> None:
    """The limits of ``/predict/batch``: count, size of each file, no empty file."""
    check_count(len(files), settings)
    for position, data in enumerate(files):
        if not data:
            raise bad_request(f"image {position} is empty")
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(
                413,
                f"image {position} exceeds the upload limit of {settings.max_upload_bytes} bytes",
            )


def is_numbers(data: object) -> bool:
    """A nested list whose first element, all the way down, is a number: a pixel tensor
    (``as_pixels`` checks the rest)."""
    while isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, (int, float)) and not isinstance(data, bool)


def pack_numbers(data: object, what: str) -> object:
    """``data`` as a float32 array if it is a number tensor (``as_pixels``) or one already
    (``numbers.read``), else as is (a single number included: a ``:classify`` feature may
    be one)."""
    if isinstance(data, np.ndarray):
        return data
    return as_pixels(data, what) if isinstance(data, list) and is_numbers(data) else data


def pack_values(mapping: dict[str, Any], what: str) -> None:
    """``pack_numbers`` on each value of ``mapping``, in place; ``what`` names them in
    errors, with ``{key}`` standing for each one's key."""
    for key, value in mapping.items():
        mapping[key] = pack_numbers(value, what.format(key=key))


def as_pixels(data: TensorData | np.ndarray, what: str) -> np.ndarray:
    """A JSON tensor of numbers as a float32 array; 400 if ragged or not all numbers
    (``true`` among numbers too: numpy would take it for 1.0)."""
    if not isinstance(data, np.ndarray):
        found = _element_types(data, set())
        if not found <= NUMBER_TYPES:
            names = sorted(t.__name__ for t in found - NUMBER_TYPES)
            raise bad_request(f"{what}: not a rectangular tensor of numbers (found {names})")
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"{what}: not a rectangular tensor of numbers ({exc})") from None
    if array.size and array.dtype.kind == "O" and array.ndim and is_numbers(data):
        raise bad_request(f"{what}: an integer too large for a pixel (beyond 64 bits)")
    if array.size and array.dtype.kind not in "iuf":  # strings, true/false, null, objects
        raise bad_request(f"{what}: not a rectangular tensor of numbers (found {array.dtype})")
    return array.astype(np.float32)


NUMBER_TYPES = {int, float, np.ndarray}  # arrays: tensors packed by the parsing worker


def _element_types(data: list[Any], found: set[type]) -> set[type]:
    """The types of the elements of a nested list, below its lists (one pass, C loops
    over the innermost lists)."""
    if data and type(data[0]) is list:
        for child in data:
            if type(child) is list:
                _element_types(child, found)
            else:
                found.add(type(child))
    else:
        found.update(map(type, data))
    return found
