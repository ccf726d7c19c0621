"""The gRPC messages and services of the two inference protocols, from protoc's output.

``schemas.binpb`` beside this module is what protoc made of ``inference.proto`` (the Open
Inference Protocol) and ``tfserving.proto`` (the part of TF Serving's API served here),
committed as KServe commits its generated code; ``tests/app/test_messages.py`` checks it
is protoc's output for the two files. Made again with::

    python -m grpc_tools.protoc -I app/protocols \\
        --descriptor_set_out=app/protocols/schemas.binpb inference.proto tfserving.proto

It is protoc's descriptor set rather than ``*_pb2.py`` modules because those register
their names in protobuf's one default pool, where the same names already live in the
clients a process may load beside the service: ``tritonclient.grpc`` (``inference.*``)
and ``tensorflow_serving.apis`` (``tensorflow.serving.*``); either pair refuses to import
("duplicate symbol"). The classes here are built in a pool of their own. TF Serving's
maintained messages (``tensorflow-serving-api``) are not used by the service: importing
them imports TensorFlow (12.7 s and +780 MB of RSS for a LiteRT server).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from app.core.gate import Upload

SCHEMAS = Path(__file__).parent / "schemas.binpb"


@dataclass(frozen=True)
class Method:
    """A unary call: ``path`` is what gRPC routes on, ``/package.Service/Name``."""

    path: str
    request: type[Message]
    response: type[Message]


@dataclass(frozen=True)
class Proto:
    """A package's messages (by name within the package, nested ones as ``Outer.Inner``)
    and services (by full name, each its methods by name)."""

    package: str
    messages: dict[str, type[Message]]
    services: dict[str, dict[str, Method]]


class Call(NamedTuple):
    """A call as a servicer gets it: its request ``message``, the values lifted out of it
    as views into the received bytes (``raw_input_contents``: ``read_message`` in
    ``app.api.grpc_server``) and, for a call with images, the ``Upload`` its gate opened."""

    message: Message
    raws: list[memoryview]
    upload: Upload | None = None


def load(package: str, path: Path = SCHEMAS) -> Proto:
    """The messages and services of ``package`` in the descriptor set at ``path``."""
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    classes = message_factory.GetMessages(list(files), pool=pool)
    prefix = f"{package}."
    pending = [pool.FindMessageTypeByName(name) for name in classes if name.startswith(prefix)]
    messages = {}
    while pending:  # nested messages too, as Outer.Inner
        descriptor = pending.pop()
        messages[descriptor.full_name[len(prefix) :]] = message_factory.GetMessageClass(descriptor)
        pending += descriptor.nested_types
    services = {}
    for file in files:
        if file.package != package:
            continue
        for service in file.service:
            full = pool.FindServiceByName(prefix + service.name)
            services[full.full_name] = {
                m.name: Method(
                    f"/{full.full_name}/{m.name}",
                    classes[m.input_type.full_name],
                    classes[m.output_type.full_name],
                )
                for m in full.methods
            }
    return Proto(package, messages, services)


INFERENCE = load("inference")
TFSERVING = load("tensorflow.serving")
