"""What the protocols share: their tensors, images and limits.

* Images travel as standard (or URL-safe) base64 in JSON (``decode_b64``); over every
  protocol they obey the limits of ``/predict/batch``: at most ``max_files_per_request``
  per request and ``max_upload_bytes`` each, none empty (``check_images``).
* Pixels travel as JSON numbers (``as_pixels``; ``pack_numbers`` in the parsing of a
  body, ``app.protocols.numbers``) or little-endian float32 (``pixel_tensor``); their
  shape and values are checked against the version's contract by the service.
* The output of every protocol is the table of probabilities (``probability_table``).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any

import numpy as np
from fastapi import HTTPException, Request
from pydantic import ValidatorFunctionWrapHandler, WithJsonSchema, WrapValidator

from app.core.config import Settings
from app.core.gate import Upload
from app.core.service import Classification, InferenceService

#: A JSON tensor: numbers or strings, flat (row-major) or nested. Its elements are
#: checked where it is used (``as_pixels``, the base64 strings of images): a
#: recursive element type made pydantic take 6 s over the largest legal tensor.
TensorData = list[Any]
MOST_RANK = 8  # dimensions of an input's shape: images have 4 (numpy refuses past 64)


def tensor(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """An array the parsing made of a tensor as it is; anything else as the type says."""
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


def check_images(files: list[bytes] | list[memoryview], settings: Settings) -> None:
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


def pixel_tensor(
    shape: list[int],
    what: str,
    settings: Settings,
    raw: bytes | memoryview | None = None,
    values: np.ndarray | TensorData | None = None,
) -> np.ndarray:
    """A float32 tensor of ``shape`` (its first size the image count, checked) from
    little-endian float32 bytes ``raw``, or ``values`` (an array, or a JSON tensor:
    ``as_pixels``); 400 when they do not fill it."""
    check_count(shape[0], settings)
    count = math.prod(shape)
    if count == 0:  # numpy refuses such a shape when its other sizes are huge
        raise bad_request(f"{what}: shape {shape} holds no pixels")
    if raw is not None:
        if len(raw) != 4 * count:
            raise bad_request(f"{what}: shape {shape} needs {4 * count} bytes")
        values = np.frombuffer(raw, dtype="<f4")
    elif not isinstance(values, np.ndarray):
        values = as_pixels([] if values is None else values, what)
    if values.size != count:
        raise bad_request(f"{what}: shape {shape} but {values.size} elements")
    return values.reshape(shape).astype(np.float32, copy=False)


async def classify_input(
    service: InferenceService,
    given: list[bytes] | list[memoryview] | np.ndarray,
    version: str | None,
    upload: Upload | None,
) -> list[Classification]:
    """Image files through ``InferenceService.classify`` (within ``check_images``),
    pixels through ``classify_tensor``: every protocol's way to its answer."""
    if isinstance(given, np.ndarray):
        check_count(len(given) if given.ndim else 0, service.settings)
        return await service.classify_tensor(given, version, upload)
    check_images(given, service.settings)
    return await service.classify(given, upload=upload, version=version)


def probability_table(results: list[Classification]) -> np.ndarray:
    """The output ``probabilities``: float32 [N, C], classes in the contract's order."""
    return np.array([list(r.probabilities.values()) for r in results], np.float32)
