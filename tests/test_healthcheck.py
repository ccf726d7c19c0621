"""docker/healthcheck.py, the images' HEALTHCHECK: exit 0 only while /healthz on $PORT is 200."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from servicekit import ROOT, free_port, uvicorn_server

SCRIPT = ROOT / "docker" / "healthcheck.py"


def healthcheck(port: int) -> int:
    """The exit code of the image's health check for a service on ``port``."""
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, timeout=30).returncode


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_port() -> Iterator[int]:
    """A port where every GET answers 503."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthy_service_passes(tiny_model_base: Path, tmp_path: Path) -> None:
    with uvicorn_server(tiny_model_base, tmp_path / "server.log", poll_interval_s=0) as server:
        assert healthcheck(server.port) == 0
    assert healthcheck(server.port) == 1  # stopped: nothing answers any more


def test_nothing_listening_fails() -> None:
    assert healthcheck(free_port()) == 1


def test_an_error_answer_fails(failing_port: int) -> None:
    assert healthcheck(failing_port) == 1
