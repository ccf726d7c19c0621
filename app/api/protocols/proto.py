"""Protocol buffer messages and services read from a ``.proto`` file, without protoc or
generated code.

It reads the part of proto3 that the service's own files use (``inference.proto``,
``health.proto`` beside this module): ``syntax``, ``package``, messages (nested),
scalar, message and enum fields, ``repeated``, ``map<K, V>``, ``oneof``, enums, and
services of unary ``rpc``\\ s. Anything else is a ``ProtoSyntaxError`` naming the
line. The descriptors are built in a pool of the file's own, so its messages never
collide with generated code for the same package that a client library loads into
protobuf's default pool (``tritonclient.grpc`` does, for ``inference``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

_F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}
_TOKEN = re.compile(r'(\s+|//[^\n]*)|("[^"\n]*"|[A-Za-z_][\w.]*|-?\d+|[{}();=<>,])')


class ProtoSyntaxError(ValueError):
    """The file uses something outside the subset read here, or is malformed."""


@dataclass(frozen=True)
class Method:
    """A unary call: ``path`` is what gRPC routes on, ``/package.Service/Name``."""

    path: str
    request: type[Message]
    response: type[Message]


@dataclass(frozen=True)
class Proto:
    """A ``.proto`` file's messages (by name within the package, nested ones as
    ``Outer.Inner``) and services (by full name, each its methods by name)."""

    package: str
    messages: dict[str, type[Message]]
    services: dict[str, dict[str, Method]]


def load(path: Path) -> Proto:
    """The messages and services of the ``.proto`` file at ``path``."""
    return parse(path.read_text(), path.name)


def parse(text: str, name: str = "schema.proto") -> Proto:
    """The messages and services of ``.proto`` source ``text`` (``name`` labels errors)."""
    reader = _Reader(text, name)
    file = reader.file()
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    prefix = f"{file.package}." if file.package else ""
    messages = {
        full[len(prefix) :]: message_factory.GetMessageClass(pool.FindMessageTypeByName(full))
        for full in reader.messages
    }
    services = {}
    for service in file.service:
        full = prefix + service.name
        services[full] = {
            method.name: Method(
                f"/{full}/{method.name}",
                messages[method.input_type[len(prefix) + 1 :]],
                messages[method.output_type[len(prefix) + 1 :]],
            )
            for method in service.method
        }
    return Proto(file.package, messages, services)


@dataclass
class _Reference:
    """A field or method naming a type, resolved once every type is known."""

    target: object  # FieldDescriptorProto or MethodDescriptorProto
    attribute: str  # "type_name", "input_type" or "output_type"
    name: str
    scope: str  # full name of the message it is in ("" at the top)
    line: int


@dataclass
class _Reader:
    text: str
    name: str
    tokens: list[tuple[str, int]] = field(default_factory=list)
    at: int = 0
    package: str = ""
    messages: list[str] = field(default_factory=list)  # full names
    enums: list[str] = field(default_factory=list)
    references: list[_Reference] = field(default_factory=list)

    def __post_init__(self) -> None:
        line, position = 1, 0
        for match in _TOKEN.finditer(self.text):
            if match.start() != position:
                self._fail(f"unexpected {self.text[position]!r}", line)
            position = match.end()
            if match.group(2):
                self.tokens.append((match.group(2), line))
            line += match.group(0).count("\n")
        if position != len(self.text):
            self._fail(f"unexpected {self.text[position]!r}", line)

    # ------------------------------------------------------------ tokens

    def _fail(self, message: str, line: int | None = None) -> NoReturn:
        if line is None:
            line = self.tokens[min(self.at, len(self.tokens) - 1)][1] if self.tokens else 1
        raise ProtoSyntaxError(f"{self.name}:{line}: {message}")

    def _peek(self) -> str:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else ""

    def _next(self) -> str:
        if self.at >= len(self.tokens):
            self._fail("unexpected end of file")
        self.at += 1
        return self.tokens[self.at - 1][0]

    def _expect(self, *texts: str) -> None:
        for text in texts:
            got = self._next()
            if got != text:
                self._fail(f"expected {text!r}, found {got!r}")

    def _identifier(self) -> str:
        word = self._next()
        if not re.fullmatch(r"[A-Za-z_]\w*", word):
            self._fail(f"expected a name, found {word!r}")
        return word

    def _number(self) -> int:
        word = self._next()
        if not re.fullmatch(r"-?\d+", word):
            self._fail(f"expected a number, found {word!r}")
        return int(word)

    def _line(self) -> int:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else 0

    # ------------------------------------------------------------ grammar

    def file(self) -> descriptor_pb2.FileDescriptorProto:
        file = descriptor_pb2.FileDescriptorProto(name=self.name, syntax="proto3")
        self._expect("syntax", "=", '"proto3"', ";")
        while self.at < len(self.tokens):
            word = self._next()
            if word == "package":
                self.package = file.package = self._next()
                self._expect(";")
            elif word == "message":
                self._message(file.message_type.add(), "")
            elif word == "enum":
                self._enum(file.enum_type.add(), "")
            elif word == "service":
                self._service(file.service.add())
            else:
                self._fail(f"unexpected {word!r}")
        self._resolve()
        return file

    def _full(self, scope: str, name: str) -> str:
        return ".".join(part for part in (self.package, scope, name) if part)

    def _message(self, message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        message.name = self._identifier()
        inner = f"{scope}.{message.name}" if scope else message.name
        self.messages.append(self._full(scope, message.name))
        self._expect("{")
        while (word := self._next()) != "}":
            if word == "message":
                self._message(message.nested_type.add(), inner)
            elif word == "enum":
                self._enum(message.enum_type.add(), inner)
            elif word == "oneof":
                message.oneof_decl.add(name=self._identifier())
                self._expect("{")
                while self._peek() != "}":
                    added = self._field(message, self._next(), inner)
                    added.oneof_index = len(message.oneof_decl) - 1
                self._expect("}")
            elif word == "map":
                self._map(message, inner)
            elif word == "repeated":
                self._field(message, self._next(), inner).label = _F.LABEL_REPEATED
            else:
                self._field(message, word, inner)

    def _field(
        self, message: descriptor_pb2.DescriptorProto, kind: str, scope: str
    ) -> descriptor_pb2.FieldDescriptorProto:
        line = self._line()
        added = message.field.add(name=self._identifier(), label=_F.LABEL_OPTIONAL)
        self._expect("=")
        added.number = self._number()
        self._expect(";")
        if kind in SCALARS:
            added.type = SCALARS[kind]
        else:
            self.references.append(_Reference(added, "type_name", kind, scope, line))
        return added

    def _map(self, message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        self._expect("<")
        key = self._next()
        if key not in SCALARS or key in ("double", "float", "bytes"):
            self._fail(f"map key {key!r} is not an integer, bool or string type")
        self._expect(",")
        value = self._next()
        self._expect(">")
        line = self._line()
        name = self._identifier()
        entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=SCALARS[key])
        target = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
        if value in SCALARS:
            target.type = SCALARS[value]
        else:
            self.references.append(_Reference(target, "type_name", value, scope, line))
        self._expect("=")
        message.field.add(
            name=name,
            number=self._number(),
            label=_F.LABEL_REPEATED,
            type=_F.TYPE_MESSAGE,
            type_name=f".{self._full(scope, entry.name)}",
        )
        self._expect(";")

    def _enum(self, enum: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        enum.name = self._identifier()
        self.enums.append(self._full(scope, enum.name))
        self._expect("{")
        while self._peek() != "}":
            name = self._identifier()
            self._expect("=")
            enum.value.add(name=name, number=self._number())
            self._expect(";")
        self._expect("}")

    def _service(self, service: descriptor_pb2.ServiceDescriptorProto) -> None:
        service.name = self._identifier()
        self._expect("{")
        while self._next() != "}":
            line = self.tokens[self.at - 1][1]
            if self.tokens[self.at - 1][0] != "rpc":
                self._fail("a service holds only rpc lines")
            method = service.method.add(name=self._identifier())
            self._expect("(")
            self.references.append(_Reference(method, "input_type", self._next(), "", line))
            self._expect(")", "returns", "(")
            self.references.append(_Reference(method, "output_type", self._next(), "", line))
            self._expect(")")
            if self._peek() == "{":
                self._expect("{", "}")
            else:
                self._expect(";")

    def _resolve(self) -> None:
        """Each named type, looked up from the innermost scope outwards, as protoc does."""
        known = {name: _F.TYPE_MESSAGE for name in self.messages}
        known.update({name: _F.TYPE_ENUM for name in self.enums})
        for reference in self.references:
            parts = reference.scope.split(".") if reference.scope else []
            for depth in range(len(parts), -1, -1):
                full = self._full(".".join(parts[:depth]), reference.name)
                if full in known:
                    break
            else:
                self._fail(f"unknown type {reference.name!r}", reference.line)
            setattr(reference.target, reference.attribute, f".{full}")
            if reference.attribute == "type_name":
                reference.target.type = known[full]  # type: ignore[attr-defined]


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
