"""The gRPC messages and services of both protocols, from protoc's output.

``schemas.binpb`` is protoc's descriptor set of ``inference.proto`` and
``tfserving.proto``, committed (``tests/app/test_messages.py`` checks it), made with::

    python -m grpc_tools.protoc -I app/protocols \\
        --descriptor_set_out=app/protocols/schemas.binpb inference.proto tfserving.proto

Not ``*_pb2.py``: those register in protobuf's default pool, where
``tritonclient.grpc`` and ``tensorflow_serving.apis`` put the same names ("duplicate
symbol"); these classes live in a pool of their own. ``tensorflow-serving-api``'s
messages import TensorFlow (12.7 s, +780 MB for a LiteRT server).
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
    """A package's messages (``Outer.Inner`` for nested ones) and services' methods."""

    package: str
    messages: dict[str, type[Message]]
    services: dict[str, dict[str, Method]]


class Call(NamedTuple):
    """A call as a servicer gets it: its message, its raw inputs (views into the bytes
    received) and, for a call with images, the ``Upload`` its gate opened."""

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
