"""JSON bodies of the REST protocols: read into one buffer whatever their Content-Type,
parsed once, tensors of numbers as arrays; 400 naming the first problems, 413 past the
limits; large bodies parsed in a worker process (``app.core.offload``). A JSON request
peaks at 2.8 bytes per byte of its files (bench/results/upload-memory.json).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, TypeVar

import numpy as np
import simdjson
from fastapi import HTTPException, Request
from pydantic import (
    BaseModel,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from app.core.config import Settings
from app.core.gate import json_too_large
from app.core.offload import OffloadBrokenError
from app.core.service import InferenceService
from catdog.contract import ModelContract

M = TypeVar("M", bound=BaseModel)
JSON_SLACK = 4096  # values of a legal body beside its tensor: keys, shape, parameters
MIN_BYTES = 4096  # smaller tensors are cheap enough as Python objects
MOST_NUMBER_BYTES = 1000  # between two brackets or commas; pixels need ~20
MOST_RANK = 8  # dimensions of an input (images have 4; numpy refuses past 64)
NUMBER_TYPES = {int, float, np.ndarray}  # arrays: tensors packed by ``read`` or a worker
#: A JSON tensor: numbers or strings, flat or nested, its elements checked where used (a
#: recursive element type made pydantic take 6 s over the largest legal tensor).
TensorData = list[Any]


def tensor(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """An array the parsing made of a tensor as it is; anything else as the type says."""
    return value if isinstance(value, np.ndarray) else handler(value)


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
    """The body in one growing buffer (``request.body()`` would keep it, and a copy)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body


def is_numbers(data: object) -> bool:
    """A nested list whose first element, all the way down, is a number."""
    while isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, (int, float)) and not isinstance(data, bool)


def pack_numbers(data: object, what: str) -> object:
    """``data`` as a float32 array if it is a number tensor (``as_pixels``), else as is."""
    if isinstance(data, np.ndarray):
        return data
    return as_pixels(data, what) if isinstance(data, list) and is_numbers(data) else data


def pack_values(mapping: dict[str, Any], what: str) -> None:
    """``pack_numbers`` on each value of ``mapping``, in place (``{key}`` in ``what``)."""
    for key, value in mapping.items():
        mapping[key] = pack_numbers(value, what.format(key=key))


def as_pixels(data: TensorData | np.ndarray, what: str) -> np.ndarray:
    """A JSON tensor of numbers as float32; 400 if ragged or not all numbers (``true``
    among numbers too: numpy would take it for 1.0)."""
    if not isinstance(data, np.ndarray):
        found = _element_types(data, set())
        if not found <= NUMBER_TYPES:
            names = sorted(t.__name__ for t in found - NUMBER_TYPES)
            raise HTTPException(400, f"{what}: not a rectangular tensor of numbers (found {names})")
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise HTTPException(400, f"{what}: not a rectangular tensor of numbers ({exc})") from None
    if array.size and array.dtype.kind == "O" and array.ndim and is_numbers(data):
        raise HTTPException(400, f"{what}: an integer too large for a pixel (beyond 64 bits)")
    if array.size and array.dtype.kind not in "iuf":  # strings, true/false, null, objects
        raise HTTPException(
            400, f"{what}: not a rectangular tensor of numbers (found {array.dtype})"
        )
    return array.astype(np.float32)


def _element_types(data: list[Any], found: set[type]) -> set[type]:
    """The types below a nested list's lists (C loops over the innermost lists)."""
    if data and type(data[0]) is list:
        for child in data:
            if type(child) is list:
                _element_types(child, found)
            else:
                found.add(type(child))
    else:
        found.update(map(type, data))
    return found


def decode_b64(text: str, what: str) -> bytes:
    """The bytes of a standard or URL-safe base64 string; 400 naming ``what`` otherwise."""
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(text, altchars=b"-_", validate=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(
            400,
            f"{what} is not valid base64: the standard or URL-safe alphabet, padded with = "
            "to a multiple of 4 characters",
        ) from None


def decode_all(texts: list[str], what: str) -> list[bytes]:
    """Each base64 text decoded, the list emptied as it goes (each text freed in turn)."""
    files = []
    for position in range(len(texts)):
        files.append(decode_b64(texts[position], f"{what} {position}"))
        texts[position] = ""
    return files


def most_values(settings: Settings, contract: ModelContract) -> int:
    """The most JSON values a legal body holds: ``max_json_images`` images of pixels."""
    height, width = contract.image_size
    return settings.json_images * height * width * 3 + JSON_SLACK


class Reading(NamedTuple):
    """How ``read_json`` reads a body."""

    most: int  # values the body may hold (``check_values``)
    pack: Callable[[Any], None]  # the protocol's: its number tensors as arrays
    leftovers: int  # values besides them (``check_leftovers``)
    fast: bool  # parse once, large number tensors straight into arrays (``read``)


async def parse_json(
    service: InferenceService, model: type[M], body: bytes | bytearray, most: int, pack: Callable
) -> M:
    """``read_json`` after ``check_values`` (413 first past ``max_json_bytes``), in a
    worker process from ``OFFLOAD_BYTES`` or ``json_offload_values`` values; 503 if the
    worker dies."""
    settings = service.settings
    if len(body) > settings.max_json_bytes:
        raise HTTPException(413, json_too_large(settings, len(body)))
    offload = service.offload
    leftovers = JSON_SLACK + 4 * settings.max_files_per_request  # names, shapes, base64
    reading = Reading(most, pack, leftovers, settings.json_fast_tensors)
    if not offload.enabled or len(body) < OFFLOAD_BYTES:
        values = check_values(body, most)
        if not offload.enabled or values < settings.json_offload_values:
            return read_json(model, body, fitted(reading, values, len(body)))
    try:
        answer = await offload.run(parse_packed, model, body, reading)
    except OffloadBrokenError as exc:
        retry = str(settings.retry_after_s)
        raise HTTPException(503, f"{exc}; retry", headers={"Retry-After": retry}) from None
    service.metrics.json_offloaded.inc()
    if isinstance(answer, tuple):
        raise HTTPException(*answer)
    return answer


#: Bodies of 4 MB or more are counted and parsed in the worker, whatever they hold: in
#: place, ``read_json`` takes ~25 ms for 4 MB (a worker call ~4 ms), and one 400 MB string
#: held a request for 3.7 s. The worker peaks ``PARSER_BYTES_PER_BYTE`` per byte of a long
#: string (base64: 2.9) above the ``PARSER_BYTES`` it starts at (docs/service.md).
OFFLOAD_BYTES = 4 << 20
PARSER_BYTES_PER_BYTE = 3.8
PARSER_BYTES = 69e6


def parse_packed(model: type[M], body: bytes | bytearray, reading: Reading) -> M | tuple[int, str]:
    """``check_values`` and ``read_json`` in a worker; an HTTP error as (status, detail)."""
    try:
        values = check_values(body, reading.most)
        return read_json(model, body, fitted(reading, values, len(body)))
    except HTTPException as exc:
        return exc.status_code, str(exc.detail)


def fitted(reading: Reading, values: int, size: int) -> Reading:
    """``reading`` without the fast path (``read``) for a body of fewer than one value per
    ``MIN_BYTES`` (base64 texts, long strings): it only pays for number tensors."""
    return reading._replace(fast=False) if values * MIN_BYTES < size else reading


def read_json(model: type[M], body: bytes | bytearray, reading: Reading) -> M:
    """The body as ``model``, packed and checked; parsed by ``read`` first, and again as it
    came if those values do not validate (so that its answer is the same)."""
    request = None
    values = read(body) if reading.fast else None
    if values is not None:
        try:
            request = model.model_validate(values)
            reading.pack(request)
        except (ValidationError, HTTPException):
            request = None
        del values
    if request is None:
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
        raise HTTPException(400, "invalid request: " + "; ".join(problems)) from None


def check_values(body: bytes | bytearray, most: int) -> int:
    """The values and arrays of ``body``; 413 past ``most`` values (commas), or
    ``most // 2`` arrays and objects (a pixel has one per 3 values; empty arrays nested
    deep cost an object each, no comma)."""
    commas, containers = body.count(b","), body.count(b"[") + body.count(b"{")
    advice = (
        "the images of pixels a request may send as JSON numbers; send images, or pixels "
        "as binary tensor data"
    )
    if commas >= most:
        raise HTTPException(413, f"the JSON holds more than {most} values, more than {advice}")
    if containers >= most // 2:
        raise HTTPException(
            413, f"the JSON holds more than {most // 2} arrays and objects, more than {advice}"
        )
    return commas + containers


def check_leftovers(request: BaseModel, most: int) -> None:
    """413 when ``request``, its number tensors packed, still holds more than ``most``
    values (each a Python object wherever the request goes)."""
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
        pending.extend(item.values() if isinstance(item, dict) else item)


_OPEN, _COMMA, _CLOSE = 1, 2, 3
#: ``bytes.translate`` table: "[" "," "]" to their token, every other byte to 0.
_TOKENS = bytes({ord("["): _OPEN, ord(","): _COMMA, ord("]"): _CLOSE}.get(c, 0) for c in range(256))
_NUMBER = np.zeros(256, bool)  # the bytes a JSON number is made of
_NUMBER[np.frombuffer(b"0123456789+-.eE", np.uint8)] = True


def read(body: bytes | bytearray) -> object | None:
    """``body`` as Python values, large tensors of numbers as float32 arrays, or None.

    The fast path: pixels as JSON numbers cost pydantic a float per number and a list per
    pixel; this takes ~60% of its time and 70% of its peak memory over 32 images
    (``python -m bench.json_offload``). An array of at least ``MIN_BYTES``, rectangular,
    of numbers below 2**53 becomes an array. None (parsed as it came, errors and all) when
    simdjson refuses the body or a number is over ``MOST_NUMBER_BYTES`` (pydantic refuses
    4,301 digits)."""
    if _longest_number(body) > MOST_NUMBER_BYTES:
        return None
    parser = simdjson.Parser()  # alive while its document is read
    try:
        document = parser.parse(bytes(body))
    except (ValueError, RuntimeError):  # not JSON, or a number simdjson cannot hold
        return None
    return _value(document)


def _longest_number(body: bytes | bytearray, chunk: int = 1 << 22) -> int:
    """The longest run of number bytes in ``body``, ``chunk`` bytes at a time."""
    view = np.frombuffer(body, np.uint8)
    longest = run = 0
    for start in range(0, len(view), chunk):
        edges = np.flatnonzero(~_NUMBER[view[start : start + chunk]])
        size = min(chunk, len(view) - start)
        if not len(edges):
            run += size
            continue
        gaps = np.diff(edges) - 1
        longest = max(longest, run + int(edges[0]), int(gaps.max()) if len(gaps) else 0)
        run = size - int(edges[-1]) - 1
    return max(longest, run)


def _value(node: object, tensors: bool = True) -> object:
    """A simdjson value as Python values, tensors of numbers as arrays (with ``tensors``;
    not inside an array that is not one, but again in its objects)."""
    if isinstance(node, simdjson.Object):
        return {key: _value(node[key]) for key in node.keys()}  # noqa: SIM118 (a proxy)
    if isinstance(node, simdjson.Array):
        array = _tensor(node) if tensors else None
        return array if array is not None else [_value(item, False) for item in node]
    return node


def _tensor(node: simdjson.Array) -> np.ndarray | None:
    """The array ``node`` holds if it is a large rectangular tensor of numbers, else None."""
    text = node.mini
    if len(text) < MIN_BYTES:
        return None
    shape: list[int] = []
    item: object = node
    while isinstance(item, simdjson.Array):
        if len(shape) == MOST_RANK or not len(item):
            return None
        shape.append(len(item))
        item = item[0]
    if type(item) not in (int, float):  # true, null, a string...
        return None
    tokens = np.frombuffer(text.translate(_TOKENS), np.uint8)
    if not np.array_equal(tokens[tokens != 0], _tokens(tuple(shape))):
        return None
    try:
        values = np.frombuffer(node.as_buffer(of_type="d"), np.float64)
    except (TypeError, ValueError):
        return None
    if values.size != math.prod(shape):
        return None
    if values.size and np.abs(values).max() >= 2.0**53:
        return None  # an integer there may not be exact in float64: numpy reads it as int64
    return values.astype(np.float32).reshape(shape)


def _tokens(shape: tuple[int, ...]) -> np.ndarray:
    """The brackets and commas of a rectangular tensor of ``shape``, in order."""
    open_, comma, close = (np.array([kind], np.uint8) for kind in (_OPEN, _COMMA, _CLOSE))
    block = np.concatenate([open_, np.full(shape[-1] - 1, _COMMA, np.uint8), close])
    for size in reversed(shape[:-1]):
        inner = np.tile(np.concatenate([block, comma]), size)[:-1]
        block = np.concatenate([open_, inner, close])
    return block
