"""JSON bodies of the protocols: read by the routes themselves, parsed once, their tensors
of numbers straight into arrays.

* Bodies are read whatever their Content-Type (tritonclient sends none, ``curl -d``
  sends a form type, the binary tensor data extension puts raw bytes after the JSON).
  A body that does not validate is a 400 naming the first problems.
* A body is refused (413) before parsing when its commas show more values than
  ``max_json_images`` images hold, or its brackets more arrays (``check_values``). A
  body of at least ``json_offload_values`` values and arrays, or of ``OFFLOAD_BYTES``
  or more, is counted and parsed in a worker process (``app.core.offload``), which
  sends its tensors back as arrays: the event loop keeps serving meanwhile. What is
  left besides those arrays (names, shapes, base64 texts) is small in a legal request;
  more than ``most_leftovers`` values is a 413 (``check_leftovers``), decided where the
  body was parsed.
* Memory: a body is read into one buffer (``common.read_body``) and dropped once
  parsed: a JSON request peaks while its body and its texts are both held, at most 2.8
  bytes per byte of its files (``bench/results/upload-memory.json``).

The fast path, ``read``, kept for what it measured: a pixel tensor as JSON numbers
costs pydantic a Python float per number and a list per pixel, and ``read`` takes
about 60% of pydantic's time and 70% of its peak memory over 32 images of pixels
(``python -m bench.json_offload``: ``bench/results/json-offload.md``, whose table
docs/protocols.md shows). It parses the body once with simdjson into
Python values in which every large rectangular tensor of numbers is already a float32
array; pydantic validates those values and the protocols take the arrays as they are.
It is only a faster way to the same answer: an array becomes an array of numbers only
when its text is at least ``MIN_BYTES``, it is rectangular (its brackets and commas are
exactly those of the shape its first elements give, at most ``MOST_RANK``
dimensions), every leaf is a JSON number, none past 2**53. ``read`` gives up (None:
the body is parsed as it came, so errors read as they always did) when simdjson
refuses the body (it refuses integers past 2**64, which pydantic reads) or a number is
longer than ``MOST_NUMBER_BYTES`` (pydantic refuses 4,301 digits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np
import simdjson
from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from app.core.config import Settings
from app.core.offload import OffloadBrokenError
from app.core.service import InferenceService
from app.protocols.common import bad_request
from catdog.contract import ModelContract

M = TypeVar("M", bound=BaseModel)
JSON_SLACK = 4096  # values of a legal body beside its tensor: keys, shape, parameters


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
    """``read_json``: 413 first, without parsing, when the body is over
    ``max_json_bytes`` or holds more than ``most`` values (``check_values``). In a worker
    process when the body is ``OFFLOAD_BYTES`` or more, or holds ``json_offload_values``
    values or more, so that neither its counting nor its parsing holds the event loop and
    no Python object per number comes back; in place otherwise, with the same answers.
    503 if the worker dies."""
    settings = service.settings
    if len(body) > settings.max_json_bytes:
        raise HTTPException(
            413,
            f"the JSON is {len(body)} bytes, more than {settings.max_json_bytes} "
            "(CATDOG_MAX_JSON_BYTES); send images as files (multipart, or binary tensor data)",
        )
    offload = service.offload
    reading = Reading(most, pack, most_leftovers(settings), settings.json_fast_tensors)
    if not offload.enabled or len(body) < OFFLOAD_BYTES:
        counts = JsonCounts.of(body)
        check_values(counts, most)
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


#: Bodies of this size or more are counted and parsed in the worker process, whatever
#: they hold. ``read_json`` on the event loop, measured on TF Serving bodies (one run, the
#: other core busy): 7 ms for 1 MB, 23-27 ms for 4 MB, 440-630 ms for 64 MB; counting a
#: 300 MB body alone takes 0.5 s. In place, one 400 MB string field held a normal request
#: for 3.7 s. At 4 MB the stall of one body stays near 25 ms; a worker call costs ~4 ms.
#: The worker's peak (VmHWM) rose by ``PARSER_BYTES_PER_BYTE`` per byte of a 100 MB body
#: of one long string (base64 images: 2.9), above the ``PARSER_BYTES`` a fresh worker
#: holds; ``max_json_bytes`` keeps that within the pods' share for a JSON parse.
OFFLOAD_BYTES = 4 << 20
PARSER_BYTES_PER_BYTE = 3.8
PARSER_BYTES = 69e6


class Reading(NamedTuple):
    """How ``read_json`` reads a body: its limits and ``pack``."""

    most: int  # values the body may hold (``check_values``)
    pack: Callable[[Any], None]  # the protocol's: its number tensors as arrays
    leftovers: int  # values besides them (``check_leftovers``)
    fast: bool  # parse once, large number tensors straight into arrays (``read``)


def parse_packed(model: type[M], body: bytes | bytearray, reading: Reading) -> M | tuple[int, str]:
    """``check_values`` and ``read_json`` in a worker process; an HTTP error as (status,
    detail)."""
    try:
        counts = JsonCounts.of(body)
        check_values(counts, reading.most)
        if sum(counts) * MIN_BYTES < len(body):  # base64 texts, not number tensors
            reading = reading._replace(fast=False)
        return read_json(model, body, reading)
    except HTTPException as exc:
        return exc.status_code, str(exc.detail)


def read_json(model: type[M], body: bytes | bytearray, reading: Reading) -> M:
    """``parse_body``, ``pack`` and ``check_leftovers``, the body parsed once with its large
    tensors of numbers read straight into arrays (``read``). If those
    values do not validate, the body is parsed again as it came, so that its answer is
    the same. The caller has checked the body's counts (``check_values``)."""
    values = read(body) if reading.fast else None
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


MIN_BYTES = 4096  # smaller tensors are cheap enough as Python objects
MOST_NUMBER_BYTES = 1000  # between two brackets or commas; pixels need ~20
MOST_RANK = 8  # tensors of more dimensions stay lists (pixels have 4)

_OPEN, _COMMA, _CLOSE = 1, 2, 3
#: ``bytes.translate`` table: "[" "," "]" to their token, every other byte to 0.
_TOKENS = bytes({ord("["): _OPEN, ord(","): _COMMA, ord("]"): _CLOSE}.get(c, 0) for c in range(256))
#: Bytes a JSON number is made of, for the longest run of them in a body.
_NUMBER = np.zeros(256, bool)
_NUMBER[np.frombuffer(b"0123456789+-.eE", np.uint8)] = True


def read(body: bytes | bytearray) -> object | None:
    """``body`` as Python values, its large tensors of numbers as float32 arrays; None
    when it is not for this reader (the module docstring says when)."""
    if _longest_number(body) > MOST_NUMBER_BYTES:
        return None
    parser = simdjson.Parser()  # alive while its document is read
    try:
        document = parser.parse(bytes(body))
    except (ValueError, RuntimeError):  # not JSON, or a number simdjson cannot hold
        return None
    return _value(document)


def _longest_number(body: bytes | bytearray, chunk: int = 1 << 22) -> int:
    """The longest run of number bytes in ``body`` (at least its longest number), read
    ``chunk`` bytes at a time so that the positions found stay small."""
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
    """A simdjson value as Python values, its tensors of numbers as numpy arrays (with
    ``tensors``; the elements of an array that is not one are lists, their objects'
    values read again as tensors)."""
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
