"""The service's gRPC messages (``app/protocols/messages.py``) and the wire scanner.

The messages built from protoc's output for ``inference.proto`` must be the protocol's:
every message that
tritonclient's generated code (Triton's ``grpc_service.proto``) also has is compared
field by field (number, type, label, message type, oneof, nested and map entries),
and messages cross between the two on the wire.
``read_message``, which counts a message's fields on the wire and lifts raw tensor data
out of it without copying it, must read what protobuf reads: the same errors, the same
fields; a group, which these schemas do not have, it refuses.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import HTTPException
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from app.api.grpc_server import read_message
from app.protocols.messages import INFERENCE, SCHEMAS
from app.protocols.oip.codec import RAW_INPUT_CONTENTS


def fields(descriptor: Descriptor, prefix: str = "") -> dict[str, tuple[object, ...]]:
    """Every field of a message and of its nested messages, by dotted name."""
    found: dict[str, tuple[object, ...]] = {}
    for f in descriptor.fields:
        found[prefix + f.name] = (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
    for nested in descriptor.nested_types:
        found.update(fields(nested, f"{prefix}{nested.name}."))
        if nested.GetOptions().map_entry:
            found[f"{prefix}{nested.name}:map_entry"] = (True,)
    return found


@pytest.mark.parametrize("name", [n for n in INFERENCE.messages if "." not in n])
def test_messages_are_the_protocols(name: str) -> None:
    ours = INFERENCE.messages[name].DESCRIPTOR
    theirs = getattr(service_pb2, name).DESCRIPTOR
    assert ours.full_name == theirs.full_name == f"inference.{name}"
    assert fields(ours) == fields(theirs)


def test_services_calls_are_the_protocols() -> None:
    ours = INFERENCE.services["inference.GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert set(ours) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }
    for name, method in ours.items():
        standard = theirs.methods_by_name[name]
        assert method.path == f"/inference.GRPCInferenceService/{name}"
        assert method.request.DESCRIPTOR.full_name == standard.input_type.full_name
        assert method.response.DESCRIPTOR.full_name == standard.output_type.full_name


def test_messages_cross_the_wire_both_ways() -> None:
    request = INFERENCE.messages["ModelInferRequest"](model_name="catdog", id="a")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=[1, 2])
    tensor.parameters["content_type"].string_param = "x"
    tensor.contents.fp32_contents.extend([0.25, 0.5])
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    request.raw_input_contents.append(b"\x01\x02")
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].parameters["content_type"].string_param == "x"
    assert list(theirs.inputs[0].contents.fp32_contents) == [0.25, 0.5]
    assert theirs.outputs[0].parameters["classification"].int64_param == 2
    back = INFERENCE.messages["ModelInferRequest"].FromString(theirs.SerializeToString())
    assert back == request


def test_schemas_are_protocs_output(tmp_path: Path) -> None:
    """The committed descriptor set is what protoc makes of the two .proto files today."""
    made = tmp_path / "schemas.binpb"
    folder = SCHEMAS.parent
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{folder}"]
    command += [f"--descriptor_set_out={made}", "inference.proto", "tfserving.proto"]
    subprocess.run(command, check=True, capture_output=True)  # its own process: protoc
    assert made.read_bytes() == SCHEMAS.read_bytes(), "run the command in messages.py"


# ---------------------------------------------------------------- the wire scanner


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _outcome(body: bytes) -> tuple[str, object]:
    """protobuf's reading of a ModelInferRequest: ("error", None) or ("ok", its fields)."""
    message_class = INFERENCE.messages["ModelInferRequest"]
    try:
        message = message_class.FromString(body)
    except DecodeError:
        return "error", None
    raws = list(message.raw_input_contents)
    message.ClearField("raw_input_contents")
    return "ok", (message, raws)


def _scanned(body: bytes) -> tuple[str, object]:
    """The same through ``read_message``; a group it refuses is ("group", None)."""
    try:
        message, raws = read_message(body, MESSAGE, RAW_INPUT_CONTENTS)
    except HTTPException as exc:
        assert exc.status_code == 400
        return ("group" if "a group?" in exc.detail else "error"), None
    return "ok", (message, [bytes(r) for r in raws])


def _check(body: bytes, most: int) -> None:
    """``read_message``'s count of ``body``'s fields, for a bound of ``most``."""
    read_message(body, MESSAGE, RAW_INPUT_CONTENTS, most)


def _request() -> bytes:
    request = INFERENCE.messages["ModelInferRequest"](model_name="catdog", id="7")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[2])
    request.raw_input_contents.extend([b"\x03\x00\x00\x00abc", b"\x01\x00\x00\x00z"])
    request.outputs.add(name="probabilities")
    return request.SerializeToString()


MESSAGE = INFERENCE.messages["ModelInferRequest"]
BASE = MESSAGE(model_name="catdog").SerializeToString()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_request(), id="valid"),
        pytest.param(BASE + b"\x3a\x03abc", id="field-7"),
        pytest.param(BASE + b"\x3a\x00", id="field-7-empty"),
        pytest.param(BASE + b"\x3a\x03abc" * 5000, id="field-7-5000-times"),
        pytest.param(BASE + b"\xba\x80\x80\x80\x80\x00" + _varint(3) + b"abc", id="tag-6-bytes"),
        pytest.param(BASE + b"\x3a\x83\x80\x80\x80\x80\x00abc", id="length-6-bytes"),
        pytest.param(BASE + b"\x3a\x83\x80\x80\x80\x00abc", id="length-5-bytes"),
        pytest.param(BASE + b"\x3a" + _varint(2**31) + b"abc", id="length-2-31"),
        pytest.param(BASE + b"\x3a\x09abc", id="length-past-the-end"),
        pytest.param(BASE + b"\x3a\xff\xff", id="length-unfinished"),
        pytest.param(BASE + b"\x38\x05", id="field-7-as-varint"),
        pytest.param(BASE + b"\x3d\x00\x00\x00\x00", id="field-7-as-fixed32"),
        pytest.param(BASE + b"\x02\x00", id="field-0"),
        pytest.param(BASE + b"\x48" + b"\xff" * 9 + b"\x01", id="varint-10-bytes"),
        pytest.param(BASE + b"\x48" + b"\xff" * 10 + b"\x01", id="varint-11-bytes"),
        pytest.param(BASE + b"\x0f", id="wire-type-7"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x48\x01" * 5000 + b"\x3a\x02ab", id="fallback-past-4096-fields"),
    ],
)
def test_the_scanner_reads_what_protobuf_reads(body: bytes) -> None:
    assert _scanned(body) == _outcome(body)


def test_the_scanner_refuses_a_group() -> None:
    """Protobuf reads an unknown group; the count cannot skip it without reading it."""
    assert _outcome(BASE + b"\x43\x44")[0] == "ok"
    assert _scanned(BASE + b"\x43\x44") == ("group", None)


def test_the_scanner_equals_protobuf_on_mutated_requests() -> None:
    """Random byte flips, insertions and cuts of a valid request: same error or same
    fields and raw contents as protobuf."""
    rng = random.Random(17)
    valid = _request()
    for _ in range(3000):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(body))
            kind = rng.random()
            if kind < 0.5:
                body[at] = rng.randrange(256)
            elif kind < 0.8:
                body[at:at] = bytes([rng.randrange(256)])
            else:
                del body[at:]
                if not body:
                    break
        scanned = _scanned(bytes(body))
        if scanned[0] != "group":
            assert scanned == _outcome(bytes(body)), bytes(body).hex()


def test_fields_are_counted_through_sub_messages_and_maps() -> None:
    """The count is of what protobuf would make objects of, at every depth."""
    request = INFERENCE.messages["ModelInferRequest"](model_name="catdog")  # 1 field
    tensor = request.inputs.add(name="image_bytes", datatype="BYTES")  # 1, and 2 in it
    tensor.shape.append(2)  # 1, and 1 for the byte of its packed varint
    tensor.parameters["content_type"].string_param = "x"  # entry 1: key 1, value 1: 1
    tensor.contents.bytes_contents.extend([b"a", b"b"])  # 1, and 2 in it
    body = request.SerializeToString()
    _check(body, 13)
    with pytest.raises(HTTPException, match="more than 12 fields") as refused:
        _check(body, 12)
    assert refused.value.status_code == 413


def test_each_byte_of_packed_varints_counts() -> None:
    """Protobuf stores each one-byte varint of a packed run in 8 bytes; packed floats
    (pixels) cost what they weigh and count once."""
    request = INFERENCE.messages["ModelInferRequest"](model_name="catdog")
    tensor = request.inputs.add(name="images", datatype="FP32")
    tensor.contents.fp32_contents.extend([0.5] * 1000)
    _check(request.SerializeToString(), 10)
    tensor.contents.int64_contents.extend([1] * 1000)
    with pytest.raises(HTTPException, match="more than 1000 fields"):
        _check(request.SerializeToString(), 1000)


@pytest.mark.parametrize(
    "body",
    [b"\x0a\xff\xff\xff\xff\x0f", b"\x2a\x05\x0a\x03ab", b"\x0b\x0c", b"\x80"],
    ids=["length-past-the-end", "sub-message-cut", "group", "unfinished-key"],
)
def test_what_the_count_cannot_read_is_refused(body: bytes) -> None:
    """Nothing goes uncounted: a group (these schemas have none) or a cut field is a
    400, as protobuf's own parse would be for the cut ones."""
    with pytest.raises(HTTPException, match="not a inference.ModelInferRequest") as refused:
        _check(body, 10)
    assert refused.value.status_code == 400
    _check(b"", 10)
