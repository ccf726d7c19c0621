"""Issue 12 on a real process: bounded headers, slow clients cut off, the connection cap,
shutdown with a stalled upload (multipart, leaving clients, held refusals: test_leaving.py).

The protocol-level limits (header size and count, header and body timeouts, the
connection cap, the graceful shutdown) are checked on a real process started the
way every documented command starts it (``servicekit.server_command``, the
image's entrypoint, ``make serve``). No test asserts a speed:
bounds on time are generous (``ANSWER``), speed figures live in ``bench/``.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from servicekit import (
    ROOT,
    Server,
    free_port,
    server_env,
    start_uvicorn,
    stop,
    uvicorn_server,
    value,
    wait_ready,
)
from tests.app.helpers import (
    BOUNDARY,
    HTTP_TIMEOUT,
    good_image,
    metrics_text,
    multipart_head,
    upload,
)

ANSWER = 20.0  # seconds: a generous bound for something the server must do "at once"
HEADER_TIMEOUT = 1.5  # short, since three tests wait each out; far above a local request
BODY_TIMEOUT = 1.5
GRACE = 1.0  # seconds of graceful shutdown in the shutdown test
CAP = 12


# ---------------------------------------------------------------- raw HTTP on a real server


class Answer:
    """One HTTP response read off a socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def detail(self) -> str:
        """The JSON ``detail`` (asserting the answer is JSON)."""
        assert self.headers.get("content-type") == "application/json", (self.headers, self.body)
        return json.loads(self.body)["detail"]


async def read_answer(reader: asyncio.StreamReader, head: bytes | None = None) -> Answer:
    """Status line, headers (``head`` if already read) and a Content-Length body."""
    head = head or await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, text = line.partition(":")
        if name:
            headers[name.strip().lower()] = text.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(lines[0].split()[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF or reset) within ``ANSWER``."""
    try:
        return await asyncio.wait_for(reader.read(65536), ANSWER) == b""
    except (ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="module")
def hardened(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service with short header and body timeouts and a small connection cap."""
    log = tmp_path_factory.mktemp("hardened") / "server.log"
    with uvicorn_server(
        tiny_model_base,
        log,
        header_timeout_s=HEADER_TIMEOUT,
        body_timeout_s=BODY_TIMEOUT,
        max_connections=CAP,
    ) as server:
        yield server


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to ``server``."""
    return await asyncio.open_connection("127.0.0.1", server.port)


async def refusals(server: Server, reason: str) -> float:
    """``catdog_http_refusals_total`` for ``reason``: answers the HTTP layer gave itself."""
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        return value(await metrics_text(client), "catdog_http_refusals_total", reason=reason)


async def assert_serving(server: Server) -> None:
    """A normal prediction is still answered."""
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        response = await client.post("/predict", files=upload(good_image()))
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- item 3: header size and count


async def test_oversized_headers_get_431_before_they_end(hardened: Server) -> None:
    """Header bytes are bounded while they arrive: the answer comes long before 256 KB."""
    reader, writer = await connect(hardened)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
    head = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    for _ in range(16):  # 16 x 16 KB: eight times the default bound
        try:
            writer.write(b"a" * 16384)
            await writer.drain()
        except ConnectionError:
            break
        sent += 16384
        done, _ = await asyncio.wait({head}, timeout=1.0 if sent > 32768 else 0.05)
        if done:
            break
    else:  # a server without a bound: finish the request and see what it says
        writer.write(b"\r\n\r\n")
    answer = await asyncio.wait_for(read_answer(reader, await head), ANSWER)
    assert answer.status == 431, (answer.status, answer.body)
    assert "header" in answer.detail()
    assert sent < 256 * 1024
    writer.close()
    await assert_serving(hardened)
    assert await refusals(hardened, "header_bytes") >= 1


async def test_too_many_headers_get_431(hardened: Server) -> None:
    reader, writer = await connect(hardened)
    many = "".join(f"X-Header-{i}: {i}\r\n" for i in range(300))  # ~5 KB: under the byte bound
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: test\r\n{many}\r\n".encode())
    answer = await asyncio.wait_for(read_answer(reader), ANSWER)
    assert answer.status == 431, (answer.status, answer.body)
    assert "headers" in answer.detail()
    assert await closed(reader)
    writer.close()
    assert await refusals(hardened, "header_count") >= 1


async def test_a_malformed_request_gets_json(hardened: Server) -> None:
    reader, writer = await connect(hardened)
    writer.write(b"NOT HTTP AT ALL\x00\r\n\r\n")
    answer = await asyncio.wait_for(read_answer(reader), ANSWER)
    assert answer.status == 400
    assert answer.detail()
    writer.close()
    assert await refusals(hardened, "malformed") >= 1


# ---------------------------------------------------------------- item 4: slow clients, the cap


async def test_headers_sent_too_slowly_are_cut_off(hardened: Server) -> None:
    """A slowloris client: one header line every 0.3 s never finishes; 408 and closed."""
    reader, writer = await connect(hardened)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")

    async def drip() -> None:
        with_errors_ignored = (ConnectionError, RuntimeError)
        for i in range(int(ANSWER / 0.3)):
            await asyncio.sleep(0.3)
            try:
                writer.write(f"X-Drip-{i}: 1\r\n".encode())
                await writer.drain()
            except with_errors_ignored:
                return

    dripping = asyncio.create_task(drip())
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(read_answer(reader), ANSWER)
    finally:
        dripping.cancel()
    assert answer.status == 408, (answer.status, answer.body)
    assert "header" in answer.detail()
    assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
    assert await closed(reader)
    writer.close()
    assert await refusals(hardened, "header_timeout") >= 1


async def test_a_connection_that_sends_nothing_is_closed(hardened: Server) -> None:
    reader, writer = await connect(hardened)
    assert await closed(reader)
    writer.close()
    assert await refusals(hardened, "idle") >= 1


async def test_a_body_shorter_than_its_content_length_is_cut_off(hardened: Server) -> None:
    reader, writer = await connect(hardened)
    writer.write(multipart_head(100_000) + b"--" + BOUNDARY.encode() + b"\r\n" + b"x" * 1000)
    answer = await asyncio.wait_for(read_answer(reader), ANSWER)
    assert answer.status == 408, (answer.status, answer.body)
    assert "body" in answer.detail()
    assert await closed(reader)
    writer.close()
    await assert_serving(hardened)
    async with httpx.AsyncClient(base_url=hardened.url, timeout=HTTP_TIMEOUT) as client:
        text = await metrics_text(client)
    assert value(text, "catdog_requests_total", route="/predict", status="408") >= 1
    assert value(text, "catdog_http_refusals_total", reason="body_timeout") >= 1
    assert value(text, "catdog_images_in_flight") == 0


async def test_past_the_connection_cap_the_longest_waiting_is_closed(hardened: Server) -> None:
    """CAP + 3 connections each start a request: the first three are closed with a 503."""
    conns = []
    for _ in range(CAP + 3):
        reader, writer = await connect(hardened)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # headers started, never finished
        await writer.drain()
        conns.append((reader, writer))
        await asyncio.sleep(0.02)  # keep the order of arrival
    try:
        for reader, _ in conns[:3]:
            answer = await asyncio.wait_for(read_answer(reader), ANSWER)
            assert answer.status == 503, (answer.status, answer.body)
            assert "connections" in answer.detail()
        # A normal client still gets through (it evicts the next longest-waiting one).
        async with httpx.AsyncClient(base_url=hardened.url, timeout=HTTP_TIMEOUT) as client:
            response = await client.get("/healthz")
        assert response.status_code == 200, response.text
        assert await refusals(hardened, "connection_cap") >= 3
    finally:
        for _, writer in conns:
            writer.close()


# ---------------------------------------------------------------- item 5: shutdown


def _python_bin() -> str:
    return str(Path(sys.executable).parent)


def _launch_entrypoint(model: Path, port: int, log: Path, env: dict[str, str]) -> Server:
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    env["PATH"] = f"{_python_bin()}:{env.get('PATH', '')}"
    return _popen(["sh", str(ROOT / "docker" / "entrypoint.sh")], env, port, log)


def _launch_make(model: Path, port: int, log: Path, env: dict[str, str]) -> Server:
    """The command ``make serve`` runs (``make -n``: no install step is executed), with
    this interpreter's environment as its .venv (a worktree may have none of its own)."""
    printed = subprocess.run(
        ["make", "-s", "-n", "serve", f"VENV={sys.prefix}", "HOST=127.0.0.1", f"PORT={port}"]
        + [f"MODEL_DIR={model}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [line] = [ln for ln in printed.replace("\\\n", " ").splitlines() if "--port" in ln]
    words = shlex.split(line)
    while "=" in words[0] and not words[0].startswith("-"):  # leading VAR=value words
        name, _, val = words.pop(0).partition("=")
        env[name] = val
    return _popen(words, env, port, log)


def _launch_harness(model: Path, port: int, log: Path, env: dict[str, str]) -> Server:
    return start_uvicorn(model, log, env=env)


def _popen(command: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(process, port, log)


LAUNCHERS: dict[str, Callable[[Path, int, Path, dict[str, str]], Server]] = {
    "servicekit.server_command": _launch_harness,
    "docker/entrypoint.sh": _launch_entrypoint,
    "make serve": _launch_make,
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
async def test_shutdown_with_a_stalled_upload_ends_in_its_grace_period(
    tiny_model_base: Path, tmp_path: Path, launcher: str
) -> None:
    """A short grace period; the upload stalls (its body timeout far away); the client gets JSON."""
    env = server_env(tiny_model_base, body_timeout_s=300, graceful_shutdown_s=GRACE)
    server = LAUNCHERS[launcher](tiny_model_base, free_port(), tmp_path / "server.log", env)
    try:
        wait_ready(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(multipart_head(100_000) + b"--" + BOUNDARY.encode() + b"\r\n" + b"x" * 1000)
        await writer.drain()
        async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
            assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(0.5)  # the stalled request is inside the app by now
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        answer = await asyncio.wait_for(read_answer(reader), ANSWER)
        code = await asyncio.to_thread(server.process.wait, ANSWER)
        took = time.monotonic() - started
        writer.close()
    finally:
        stop(server, grace=5)
    assert answer.status == 503, (answer.status, answer.body, server.log_tail())
    assert "shutting down" in answer.detail()
    assert code in (0, -signal.SIGTERM), server.log_tail()
    assert took < GRACE + ANSWER / 2, server.log_tail()
