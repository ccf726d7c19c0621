"""JSON bodies parsed once, with their tensors of numbers read straight into arrays.

A pixel tensor sent as JSON numbers (TF Serving's ``instances``/``inputs``, an OIP
input's ``data``) costs pydantic a Python float per number and a list per pixel: seconds
of CPU and several times the body in memory for 32 images
(``bench/results/json-offload.md``). ``read`` parses the body once with simdjson into
Python values, in which every large rectangular tensor of numbers is already a float32
array; pydantic then validates those values, and the protocols take the arrays as they
are (``common.pack_numbers``).

It is only a faster way to the same answer. An array becomes an array of numbers only
when its text is at least ``MIN_BYTES``, it is rectangular (its brackets and commas are
exactly those of the shape its first elements give, at most ``MOST_RANK`` dimensions),
every leaf is a JSON number, none past 2**53 (numpy rounds such an integer once, to
float32). ``read`` gives up (None: the caller parses the body as it came, so errors read
as they always did) when simdjson refuses the body (its number grammar is JSON's, but it
refuses integers past 2**64, which pydantic reads) or a number is longer than
``MOST_NUMBER_BYTES`` (pydantic refuses 4,301 digits).
"""

from __future__ import annotations

import math

import numpy as np
import simdjson

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
