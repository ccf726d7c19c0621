"""A local OTLP/HTTP receiver for benchmarks: accepts span exports and counts them.

``python -m bench.otlp_sink --port 4318`` answers every ``POST /v1/traces`` with 200
and prints, at exit (SIGINT/SIGTERM), how many exports and bytes it received, so a
benchmark of ``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`` pays for sending
spans, as it would to a collector, without one installed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = {"exports": 0, "bytes": 0}


class Receiver(BaseHTTPRequestHandler):
    """200 to every POST; the body is read and counted, nothing else."""

    def do_POST(self) -> None:  # noqa: N802  # http.server's name
        size = int(self.headers.get("content-length", 0))
        self.rfile.read(size)
        received["exports"] += 1
        received["bytes"] += size
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    port = parser.parse_args().port
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        print(f"received {received['exports']} exports, {received['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
