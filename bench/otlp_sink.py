"""A local OTLP receiver for benchmarks: takes span exports, counts them, discards them.

``python -m bench.otlp_sink --port 4318 --grpc-port 4317`` answers every OTLP/HTTP
``POST /v1/traces`` with 200 (HTTP/1.1, the exporter's connection kept open) and
every OTLP/gRPC ``TraceService/Export`` with an empty response, without parsing
either, and prints at exit (SIGINT/SIGTERM) how many exports and bytes it got. A
benchmark of ``OTEL_EXPORTER_OTLP_ENDPOINT`` then pays for sending spans, as to a
collector, while the receiver itself costs next to nothing
(``bench/results/ops-overhead.md``; beside a pinned server, pin it apart with
``taskset``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

received = {"exports": 0, "bytes": 0}
_lock = threading.Lock()
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def count(size: int) -> None:
    with _lock:
        received["exports"] += 1
        received["bytes"] += size


class Receiver(BaseHTTPRequestHandler):
    """200 to every POST; the body is read and counted, nothing else."""

    protocol_version = "HTTP/1.1"  # keep-alive: no connection per export

    def do_POST(self) -> None:  # noqa: N802  # http.server's name
        size = int(self.headers.get("content-length", 0))
        self.rfile.read(size)
        count(size)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def export(request: bytes, context: grpc.ServicerContext) -> bytes:
    """OTLP/gRPC Export: the message counted unparsed; an empty response is b""."""
    count(len(request))
    return b""


def grpc_server(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(export)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318, help="OTLP/HTTP")
    parser.add_argument("--grpc-port", type=int, default=0, help="OTLP/gRPC (0: none)")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Receiver)
    over_grpc = grpc_server(args.grpc_port) if args.grpc_port else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if over_grpc is not None:
            over_grpc.stop(0)
        print(f"received {received['exports']} exports, {received['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
