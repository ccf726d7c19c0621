"""Which project files and functions one request crosses: ``POST /predict`` and gRPC
``ModelInfer``.

``python -m bench.request_path`` (or ``python /path/to/bench/request_path.py`` from
another checkout, whose ``app`` it then measures) builds the app as ``python -m app``
serves it, with its HTTP protocol from ``app.server.build_config`` and gRPC on a free
port, warms each path with one request, then records every Python function of the
repository (``app/``, ``catdog/``) called while one more request of each kind is
answered, in every thread (a profiler set before the app's threads start). Prints the
files and the number of distinct functions per file.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))  # the checkout this runs in, not an installed one
seen: set[tuple[str, str]] = set()
active = False


def profile(frame: Any, event: str, arg: Any) -> None:
    if active and event == "call":
        name = frame.f_code.co_filename
        if name.startswith(str(ROOT)) and "/bench/" not in name and "/.venv/" not in name:
            seen.add((str(Path(name).relative_to(ROOT)), frame.f_code.co_name))


class Transport:
    """Collects what the protocol writes; every other transport method does nothing."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def photo() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (200, 160), (120, 80, 40)).save(out, "JPEG")
    return out.getvalue()


async def post(protocol: Any, transport: Transport, image: bytes) -> None:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n"
        b"Content-Type: image/jpeg\r\n\r\n" + image + b"\r\n--b--\r\n"
    )
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    transport.written.clear()
    protocol.data_received(head + body)
    while b'"label"' not in transport.written:
        await asyncio.sleep(0.005)


async def infer(port: int, image: bytes) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="catdog")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        await call(request, timeout=60)


async def measure() -> dict[str, set[tuple[str, str]]]:
    global active
    from asgi_lifespan import LifespanManager
    from uvicorn.server import ServerState

    from app.core.config import Settings
    from app.main import create_app
    from app.server import build_config

    app = create_app(Settings(model_dir=str(ROOT / "models/catdog"), grpc_address="127.0.0.1:0"))
    image = photo()
    found = {}
    async with LifespanManager(app, startup_timeout=300):
        config = build_config(app, access_log=False)
        config.load()
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}
        )
        transport = Transport()
        protocol.connection_made(transport)
        port = app.state.grpc.port
        for name, once in (
            ("POST /predict", lambda: post(protocol, transport, image)),
            ("gRPC ModelInfer", lambda: infer(port, image)),
        ):
            await once()  # warm
            seen.clear()
            active = True
            await once()
            active = False
            found[name] = set(seen)
        protocol.connection_lost(None)
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Print the files and functions each kind of request crosses."""
    argparse.ArgumentParser(prog="python -m bench request_path", description=__doc__).parse_args(
        argv
    )
    threading.setprofile(profile)
    sys.setprofile(profile)
    found = asyncio.run(measure())
    sys.setprofile(None)
    for name, calls in found.items():
        by_file: dict[str, set[str]] = defaultdict(set)
        for file, function in calls:
            by_file[file].add(function)
        print(f"\n{name}: {len(by_file)} files, {len(calls)} functions")
        for file in sorted(by_file):
            print(f"  {file}: {len(by_file[file])} ({', '.join(sorted(by_file[file]))})")


if __name__ == "__main__":
    main()
