"""Tensors of JSON numbers read straight into arrays, without a Python object per number.

A pixel tensor sent as JSON numbers (TF Serving's ``instances``/``inputs``, an OIP
input's ``data``) would cost pydantic a Python float per number and a list per pixel:
seconds of CPU and several times the body in memory for 32 images. ``extract`` finds
each such tensor in the body's bytes, checks it and reads it with simdjson and numpy,
and hands back the body with a small marker in its place, which pydantic validates as
before; ``Markers.take`` puts the arrays back where the markers land.

It is only a faster way to the same answer. A tensor is taken only when
* the body is mostly numbers (``extract``: bytes per value, brackets, strings);
* it is the value of one of ``KEYS``, an array of at least ``MIN_BYTES`` bytes holding
  nothing but numbers, commas, brackets and whitespace;
* it is rectangular (``_shape``, at most ``MOST_RANK`` dimensions): every array at a
  depth has as many elements, and numbers sit only at the deepest;
* simdjson parses it (JSON's number grammar: no ``01``, ``1.``, ``NaN``, ``1e400``),
  every leaf is a number, none longer than ``MOST_NUMBER_BYTES`` (pydantic refuses
  4,301 digits) and none past 2**53 (numpy rounds such an integer once, to float32).

Anything else stays in the body for pydantic, and a request whose markers do not all
land where a tensor is read is parsed again from its original bytes, so errors read as
they always did. The work is bounded for any body: in dimensions, strings, escapes, and
the tokens the shape reading may look at (``_Scans``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

import numpy as np
import simdjson

KEYS = frozenset({b"instances", b"inputs", b"images", b"data"})
LONGEST_KEY = max(map(len, KEYS)) + 1  # from its opening quote to its closing one
MIN_BYTES = 4096  # smaller tensors are cheap enough as Python objects
MOST_STRINGS = 256  # bodies with more strings than this are left to pydantic
MOST_ESCAPES = 8  # a quote after more backslashes than this: left to pydantic
MOST_BYTES_PER_VALUE = 64  # a tensor of numbers, even indented, has fewer per comma
MOST_NUMBER_BYTES = 1000  # between two brackets or commas; pixels need ~20
MOST_RANK = 8  # tensors of more dimensions are left to pydantic (pixels have 4)

_WHITESPACE = b" \t\r\n"
_TENSOR_BYTES = b"0123456789+-.eE,[]" + _WHITESPACE  # all a tensor of numbers is made of
#: After a key's closing quote: the colon, and an array whose first element, down its
#: brackets, starts with a number. Group 1 is the array's "[".
_ARRAY_OF_NUMBERS = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*(\[)[ \t\r\n\[]*[-0-9]")
_OPEN, _COMMA, _CLOSE = 1, 2, 3
#: ``bytes.translate`` table: "[" "," "]" to their token, every other byte to 0.
_TOKENS = bytes({ord("["): _OPEN, ord(","): _COMMA, ord("]"): _CLOSE}.get(c, 0) for c in range(256))


@dataclass
class Markers:
    """The arrays taken out of a body, each under the marker text that replaced it."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    taken: int = 0

    def take(self, data: object) -> object:
        """The array ``data`` stands for if it is a marker (``[["<marker>"]]``), else ``data``."""
        if (
            self.arrays
            and type(data) is list
            and len(data) == 1
            and type(data[0]) is list
            and len(data[0]) == 1
            and type(data[0][0]) is str
        ):
            array = self.arrays.get(data[0][0])
            if array is not None:
                self.taken += 1
                return array
        return data

    @property
    def all_taken(self) -> bool:
        """Whether every marker was replaced by its array (each stands in one place)."""
        return self.taken == len(self.arrays)


def extract(body: bytes | bytearray, commas: int) -> tuple[bytes, Markers] | None:
    """``body`` with its large number tensors replaced by markers, and their arrays; None
    when there are none to take, or the body is not mostly numbers: more than
    ``MOST_BYTES_PER_VALUE`` bytes per value (``commas`` + 1: its commas, counted by the
    caller), or more ``]`` than ``[`` (they would be in strings)."""
    if len(body) > MOST_BYTES_PER_VALUE * (commas + 1):
        return None
    starts = _candidates(body)
    if not starts or body.count(b"]") > body.count(b"["):
        return None
    codes = np.frombuffer(body.translate(_TOKENS), np.uint8)
    where = np.flatnonzero(codes)
    kinds = codes[where]
    del codes
    nonce = secrets.token_hex(16)
    markers = Markers()
    pieces: list[bytes] = []
    done = 0
    budget = len(kinds)  # tensors do not overlap: together they hold at most every token
    scans = _Scans(len(kinds))
    for start in starts:
        first = int(np.searchsorted(where, start))
        try:
            shape, length = _shape(kinds, first, scans)
        except _TooLong:
            break
        if shape is None or start < done or length > budget:
            continue
        budget -= length
        if not np.array_equal(kinds[first : first + length], _tokens(shape)):
            continue
        end = int(where[first + length - 1])
        if end - start + 1 < MIN_BYTES or body[start : end + 1].translate(None, _TENSOR_BYTES):
            continue  # small, or holds something besides numbers (a string, true, null...)
        if np.diff(where[first : first + length]).max() > MOST_NUMBER_BYTES:
            continue  # a number longer than pydantic reads (it refuses 4,301 digits)
        array = _read(memoryview(body)[start : end + 1], shape)
        if array is None:
            continue
        marker = f"catdog-tensor:{nonce}:{len(markers.arrays)}"
        markers.arrays[marker] = array
        pieces += [bytes(body[done:start]), f'[["{marker}"]]'.encode()]
        done = end + 1
    if not markers.arrays:
        return None
    pieces.append(bytes(body[done:]))
    return b"".join(pieces), markers


def _candidates(body: bytes | bytearray) -> list[int]:
    """Positions of the ``[`` that starts the value of a key in ``KEYS``, in order; none
    when the body holds more than ``MOST_STRINGS`` strings, or a quote after a run of
    backslashes longer than any a key or number tensor needs."""
    if body.count(b'"') > 2 * MOST_STRINGS:
        return []
    found = []
    opened = None
    position = body.find(b'"')
    while position >= 0:
        escapes = 0
        while position - escapes > 0 and body[position - escapes - 1] == ord("\\"):
            escapes += 1
            if escapes > MOST_ESCAPES:
                return []
        if escapes % 2 == 0:  # not an escaped quote inside a string
            if opened is None:
                opened = position
            else:
                if position - opened <= LONGEST_KEY and bytes(body[opened + 1 : position]) in KEYS:
                    value = _ARRAY_OF_NUMBERS.match(body, position + 1)
                    if value is not None:
                        found.append(value.start(1))
                opened = None
        position = body.find(b'"', position + 1)
    return found


def _shape(kinds: np.ndarray, first: int, scans: _Scans) -> tuple[tuple[int, ...] | None, int]:
    """The shape of the tensor whose ``[`` is token ``first``, read down its first
    elements, and how many tokens it spans if it is rectangular: (None, 0) if even its
    first elements do not make a shape, or it has more than ``MOST_RANK`` dimensions.

    ``rank`` leading brackets, then the innermost array's commas; going up, each array
    holds blocks of the size below separated by commas until a closing bracket.
    """
    head = kinds[first : first + MOST_RANK + 1]
    rank = int(np.argmax(head != _OPEN)) if (head != _OPEN).any() else 0
    if rank == 0:
        return None, 0
    sizes = [_run(kinds, first + rank, 1, scans)]  # the innermost array: its commas, then "]"
    if sizes[0] == 0:
        return None, 0
    block = sizes[0] + 1  # its tokens: "[", the commas, "]"
    for level in range(rank - 1, 0, -1):  # the first array at this depth: token level - 1
        count = _run(kinds, first + level + block, block + 1, scans)
        if count == 0:
            return None, 0
        sizes.append(count)
        block = count * (block + 1) + 1
    return tuple(reversed(sizes)), block


class _Scans:
    """Tokens the shape reading may still look at, over all of a body's candidates:
    twice the body's, so that candidates laid out to make each other's reading run
    long cost no more than reading the body twice."""

    def __init__(self, tokens: int) -> None:
        self.left = 2 * tokens

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise _TooLong


class _TooLong(Exception):
    """The body's candidates looked at more tokens than ``_Scans`` allows."""


def _run(kinds: np.ndarray, start: int, step: int, scans: _Scans) -> int:
    """How many elements an array holds whose separators are tokens ``start``,
    ``start + step``... : 1 + the commas before the first ``]``; 0 if something else
    comes first, or nothing. Looks at windows growing fourfold, so the work is about
    the number of commas, not what lies beyond them."""
    seen, window = 0, 64
    while True:
        separators = kinds[start + seen * step : start + (seen + window) * step : step]
        scans.spend(len(separators))
        ends = np.flatnonzero(separators != _COMMA)
        if len(ends):
            return seen + int(ends[0]) + 1 if separators[ends[0]] == _CLOSE else 0
        if len(separators) < window:
            return 0  # the body ended
        seen, window = seen + window, window * 4


def _tokens(shape: tuple[int, ...]) -> np.ndarray:
    """The brackets and commas of a rectangular tensor of ``shape``, in order."""
    open_, comma, close = (np.array([kind], np.uint8) for kind in (_OPEN, _COMMA, _CLOSE))
    block = np.concatenate([open_, np.full(shape[-1] - 1, _COMMA, np.uint8), close])
    for size in reversed(shape[:-1]):
        inner = np.tile(np.concatenate([block, comma]), size)[:-1]
        block = np.concatenate([open_, inner, close])
    return block


def _read(text: memoryview, shape: tuple[int, ...]) -> np.ndarray | None:
    """The tensor ``text`` as float32 of ``shape``, or None if simdjson finds it is not
    JSON numbers, or it holds fewer numbers than ``shape`` (an empty array inside)."""
    try:
        document = simdjson.Parser().parse(text)
        values = np.frombuffer(document.as_buffer(of_type="d"), np.float64)
    except (ValueError, TypeError, RuntimeError):
        return None
    if values.size != np.prod(shape, dtype=np.int64):
        return None
    if values.size and np.abs(values).max() >= 2.0**53:
        return None  # an integer there may not be exact in float64: numpy reads it as int64
    return values.astype(np.float32).reshape(shape)
