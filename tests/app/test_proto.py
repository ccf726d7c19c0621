"""The ``.proto`` reader (``app/api/protocols/proto.py``) and the service's gRPC schema.

The schema read from ``inference.proto`` must be the protocol's: every message that
tritonclient's generated code (Triton's ``grpc_service.proto``) also has is compared
field by field (number, type, label, message type, oneof, nested and map entries),
and messages cross between the two on the wire. The reader's errors name the line.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2

from app.api.grpc_server import HEALTH, INFERENCE
from app.api.protocols import proto


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


def test_health_schema() -> None:
    response = HEALTH.messages["HealthCheckResponse"]
    assert response.SERVING == 1 and response.NOT_SERVING == 2
    assert response(status="SERVING").SerializeToString() == b"\x08\x01"
    check = HEALTH.services["grpc.health.v1.Health"]["Check"]
    assert check.path == "/grpc.health.v1.Health/Check"


def test_nested_names_resolve_from_the_inside_out() -> None:
    schema = proto.parse(
        """syntax = "proto3";
        package p;
        message Item { string name = 1; }
        message Box {
          message Item { int64 count = 1; }  // shadows the outer Item inside Box
          Item inner = 1;
          map<string, Item> by = 2;
        }
        message Tray { Item first = 1; }
        """
    )
    box = schema.messages["Box"].DESCRIPTOR
    assert box.fields_by_name["inner"].message_type.full_name == "p.Box.Item"
    entry = box.fields_by_name["by"].message_type
    assert entry.GetOptions().map_entry
    assert entry.fields_by_name["value"].message_type.full_name == "p.Box.Item"
    tray = schema.messages["Tray"].DESCRIPTOR
    assert tray.fields_by_name["first"].message_type.full_name == "p.Item"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('syntax = "proto2";', "expected '\"proto3\"'"),
        ('syntax = "proto3";\nmessage A {\n  int64 a = 1\n}', ":4: expected ';'"),
        ('syntax = "proto3";\nmessage A {\n  Missing a = 1;\n}', ":3: unknown type 'Missing'"),
        (
            'syntax = "proto3";\nmessage A {}\nservice S {\n  rpc F(stream A) returns (A);\n}',
            ":4: expected ')'",
        ),
        ('syntax = "proto3";\nmessage A {\n  map<float, A> m = 1;\n}', "map key 'float'"),
        ('syntax = "proto3";\nimport "x.proto";', ":2: unexpected 'import'"),
        ('syntax = "proto3";\nmessage A { int64 a = 1; }\n$', ":3: unexpected '$'"),
        ('syntax = "proto3";\nmessage A {', "unexpected end of file"),
    ],
    ids=["proto2", "no-semicolon", "unknown-type", "stream", "map-key", "import", "stray", "eof"],
)
def test_errors_name_the_line(text: str, words: str) -> None:
    with pytest.raises(proto.ProtoSyntaxError) as error:
        proto.parse(text, "t.proto")
    assert words in str(error.value)
    assert str(error.value).startswith("t.proto:")
