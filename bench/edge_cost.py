"""What the connection bounds cost per request: uvicorn's protocol alone, and inside
``app.connections.BoundedConnection``, for httptools and h11.

``python -m bench.edge_cost`` feeds the same keep-alive requests (a ``POST /predict`` of
a 30 kB multipart body, then a ``GET /healthz``) through each protocol in-process, with
a no-op ASGI app and a transport that only collects what is written, and prints the
median time per request over ``--rounds`` rounds of ``--requests`` each. Only the
protocol's own work is timed: no sockets, no model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string
from uvicorn.server import ServerState

from app.connections import bounded_protocol
from app.core.config import Settings

BODY = (
    b"--b\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n\r\n"
    + (b"x" * 30_000)
    + b"\r\n--b--\r\n"
)
POST = (
    b"POST /predict HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n" % len(BODY)
) + BODY
GET = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


class Collect:
    """A transport that keeps nothing and never closes."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the body, answers 200 with a small JSON."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def per_request(protocol_class: type[asyncio.Protocol], requests: int) -> float:
    """Seconds per request for ``requests`` requests on one connection."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    protocol.connection_made(Collect())  # type: ignore[arg-type]
    started = time.perf_counter()
    for i in range(requests):
        protocol.data_received(POST if i % 2 == 0 else GET)
        for _ in range(4):  # let the request's task run to its answer
            await asyncio.sleep(0)
    took = time.perf_counter() - started
    protocol.connection_lost(None)
    return took / requests


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.edge_cost", description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    settings = Settings(model_dir="models/catdog")
    rows = []
    for parser in ("httptools", "h11"):
        plain = import_from_string(HTTP_PROTOCOLS[parser])
        bounded = bounded_protocol(settings, lambda reason: None, parser)
        for name, cls in ((parser, plain), (f"{parser} + app/connections.py", bounded)):
            times = [asyncio.run(per_request(cls, args.requests)) for _ in range(args.rounds)]
            rows.append((name, statistics.median(times) * 1e6))
    print("| protocol | µs per request (median of rounds) |")
    print("| --- | --- |")
    for name, micro in rows:
        print(f"| {name} | {micro:.1f} |")


if __name__ == "__main__":
    main()
