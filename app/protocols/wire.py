"""The wire-level bound of a gRPC request: its fields counted before protobuf parses it.

A protobuf message of tiny fields costs protobuf ~25 times its size to parse (a 319 MiB
message of empty fields: +8.6 GB), so each request is first read as wire format here,
without building anything: ``check_fields`` counts its elements and stops at a bound.
``split_field`` lifts ``ModelInferRequest.raw_input_contents`` out of the bytes as views,
so that the tensor data is not copied into the message and out again.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError


def split_field(
    body: bytes, number: int, most_fields: int = 4096
) -> tuple[bytes, list[memoryview]] | None:
    """``body`` (a serialized message) without its top-level length-delimited field
    ``number``, and that field's values as views into ``body``: a large ``bytes`` field
    is neither copied into the parsed message nor again into a ``bytes`` object when
    read (each would cost its size). None when the message has more than
    ``most_fields`` top-level fields, or a group (the caller parses it whole, as
    protobuf does); ``DecodeError`` when its top level is not wire format, read as
    strictly as protobuf reads it (a key or length in at most 5 bytes)."""
    view = memoryview(body)
    kept: list[memoryview] = []
    values: list[memoryview] = []
    start = position = fields = 0
    while position < len(body):
        fields += 1
        if fields > most_fields:
            return None
        field_start = position
        found, wire, position, end = _field(body, position)
        if end < 0:  # a group (proto2, long deprecated): protobuf's to read
            return None
        if end > len(body):
            raise DecodeError(f"a field at byte {field_start} runs past the message's end")
        if found == number and wire == 2:
            kept.append(view[start:field_start])
            values.append(view[position:end])
            start = end
        position = end
    if not values:
        return body, values  # nothing lifted: the body as it is, not a copy
    kept.append(view[start:])
    return b"".join(kept), values


class TooManyFieldsError(ValueError):
    """A message holds more fields, its sub-messages' included, than a caller allows."""


_FD = FieldDescriptor
# Packed repeated fields whose elements are varints: each byte may be one element,
# which protobuf stores in 4 or 8 bytes.
_VARINTS = {
    _FD.TYPE_INT32,
    _FD.TYPE_INT64,
    _FD.TYPE_UINT32,
    _FD.TYPE_UINT64,
    _FD.TYPE_SINT32,
    _FD.TYPE_SINT64,
    _FD.TYPE_BOOL,
    _FD.TYPE_ENUM,
}


def check_fields(body: bytes, descriptor: Descriptor, most: int) -> None:
    """``TooManyFieldsError`` when ``body``, read as ``descriptor``, holds more than
    ``most`` elements in all: fields, those of its sub-messages (map entries included)
    and each byte of a packed run of varints. Protobuf makes 4 to tens of bytes of each,
    so a message of tiny elements would cost twenty-odd times its size to parse. The
    count stops at ``most``. ``DecodeError`` for what is not proto3 wire format as the
    schema has it (a group, a field past its message's end): nothing goes uncounted."""
    stack: list[tuple[int, int, Descriptor | None]] = [(0, len(body), descriptor)]
    fields = 0
    while stack:
        position, end, message = stack.pop()
        while position < end:
            fields += 1
            start = position
            number, wire, value, position = _field(body, position)
            if position < 0:
                raise DecodeError(f"wire type {wire} (a group?) at byte {start}")
            if position > end:
                raise DecodeError(f"a field at byte {start} runs past its message's end")
            field = None if message is None else message.fields_by_number.get(number)
            if wire == 2 and field is not None:
                if field.message_type is not None:
                    stack.append((value, position, field.message_type))
                elif field.is_repeated and field.type in _VARINTS:
                    fields += position - value
            if fields > most:
                raise TooManyFieldsError(f"the message holds more than {most} fields")


def _field(body: bytes, position: int) -> tuple[int, int, int, int]:
    """The field at ``position``: its number, wire type, and where its value starts and
    ends (the end may lie past the message: the caller knows its bounds; -1 for a
    group, whose end only its contents tell). ``DecodeError`` for what protobuf refuses:
    a key or length over 5 bytes, field number 0, a wire type that does not exist."""
    key, value = _varint(body, position, 5)
    number, wire = key >> 3, key & 7
    if key >= 1 << 32 or number == 0:
        raise DecodeError(f"field number {number} at byte {position}")
    if wire == 0:
        _, end = _varint(body, value)
    elif wire in (1, 5):
        end = value + (8 if wire == 1 else 4)
    elif wire == 2:
        length, value = _varint(body, value, 5)
        if length >= 1 << 31:
            raise DecodeError(f"a length of {length} at byte {position}")
        end = value + length
    elif wire in (3, 4):
        end = -1
    else:
        raise DecodeError(f"wire type {wire} at byte {position}")
    return number, wire, value, end


def _varint(data: bytes, position: int, most_bytes: int = 10) -> tuple[int, int]:
    """The base-128 varint at ``position`` (at most ``most_bytes`` long) and the position
    after it."""
    value = shift = 0
    while position < len(data) and shift < 7 * most_bytes:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise DecodeError(f"a varint at byte {position} does not end")
