"""Odd multipart bodies, clients that leave, and refusals that cannot spin (in-process).

A body without its closing boundary or with two file fields is a 400; an oversized
batch part is refused while it streams; a client that left is neither decoded nor
run through the model; a 503 for a full queue is held so a retrying client cannot
spin, and a full queue refuses before the body is read. Protocol-level limits on a real
process are in ``test_hardening.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core import batcher as batcher_module
from app.core import service as service_module
from servicekit import (
    ROOT,
    value,
)
from tests.app.helpers import (
    BOUNDARY,
    good_image,
    metrics_text,
    multipart_chunks,
    serve,
    settings_for,
    upload,
)

ANSWER = 20.0  # seconds: a generous bound for something the server must do "at once"


# ---------------------------------------------------------------- item 6: multipart, leaving


def multipart_body(*parts: tuple[str, str, bytes], closing: bool = True) -> bytes:
    """A multipart body of (field, filename, data) parts."""
    out = b""
    for field, filename, data in parts:
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return out + (f"--{BOUNDARY}--\r\n".encode() if closing else b"")


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def test_a_body_without_its_closing_boundary_is_400(client: httpx.AsyncClient) -> None:
    body = multipart_body(("file", "cat.jpg", good_image()), closing=False)
    response = await client.post("/predict", content=body, headers=HEADERS)
    assert response.status_code == 400, response.text
    assert "closing boundary" in response.json()["detail"]


@pytest.mark.parametrize(
    "extra",
    [b"X-Long: " + b"a" * 100_000 + b"\r\n", b"".join(b"X-%d: a\r\n" % i for i in range(20))],
    ids=["one long header", "many headers"],
)
async def test_huge_part_headers_are_400(client: httpx.AsyncClient, extra: bytes) -> None:
    """A part's headers are bounded as they stream (python-multipart's bound)."""
    body = multipart_body(("file", "cat.jpg", good_image()))
    body = body.replace(b"Content-Type: image/jpeg\r\n", b"Content-Type: image/jpeg\r\n" + extra)
    response = await client.post("/predict", content=body, headers=HEADERS)
    assert response.status_code == 400, response.text
    assert "malformed multipart body" in response.json()["detail"]


async def test_a_boundary_too_long_for_the_parser_is_400(client: httpx.AsyncClient) -> None:
    """python-multipart takes boundaries of up to 256 bytes (RFC 2046: 70)."""
    boundary = "q" * 257
    body = multipart_body(("file", "cat.jpg", good_image())).replace(BOUNDARY.encode(), b"q" * 257)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = await client.post("/predict", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "malformed multipart body" in response.json()["detail"]


async def test_two_file_fields_in_predict_are_refused(client: httpx.AsyncClient) -> None:
    body = multipart_body(("file", "a.jpg", good_image(1)), ("file", "b.jpg", good_image(2)))
    response = await client.post("/predict", content=body, headers=HEADERS)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "one" in detail and "/predict/batch" in detail


async def test_an_oversized_batch_part_is_refused_while_it_streams(tiny_model_base: Path) -> None:
    """One 40 MB part of /predict/batch (within the body limit): 413 after ~1 MB is read."""
    limit = 1_000_000
    total = 40_000_000
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for piece in multipart_chunks(BOUNDARY, "files", "huge.jpg", total, chunk=256 * 1024):
            sent.append(len(piece))
            yield piece

    settings = settings_for(tiny_model_base, max_upload_bytes=limit)
    async with serve(settings) as (_, client):
        response = await client.post("/predict/batch", content=body(), headers=HEADERS)
        assert response.status_code == 413, response.text
        assert "huge.jpg" in response.json()["detail"]
        assert sum(sent) < 2 * limit
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text


def _scope(path: str = "/predict") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


class LeavingClient:
    """Drives the app directly: sends one upload, then disconnects when told to."""

    def __init__(self, app: Any, data: bytes) -> None:
        self.messages = [{"type": "http.request", "body": multipart_body(("file", "a.jpg", data))}]
        self.leave = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.task = asyncio.create_task(app(_scope(), self.receive, self.send))

    async def receive(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + ANSWER
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_client_that_left_is_not_decoded(
    tiny_model_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for a decoder when its client leaves: room released at once, never decoded."""
    decoded: list[int] = []
    real = service_module.preprocess

    def counting(data: bytes, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(service_module, "preprocess", counting)
    async with serve(settings_for(tiny_model_base, decode_workers=1)) as (app, client):
        decoded.clear()  # the start-up's warm-up decodes a few images of its own
        service = app.state.service
        blocked = threading.Event()
        service._decoders.submit(blocked.wait, ANSWER * 2)  # the only decoder is busy
        service.batcher._executor.submit(blocked.wait, ANSWER * 2)  # and the model thread
        try:
            leaving = LeavingClient(app, good_image())
            await until(lambda: service.admission.in_flight == 1, "admission")
            leaving.leave.set()
            await until(lambda: service.admission.in_flight == 0, "the room to be released")
        finally:
            blocked.set()
        await asyncio.wait_for(leaving.task, ANSWER)
        assert decoded == []
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text
        assert len(decoded) == 1
        text = await metrics_text(client)
        assert value(text, "catdog_requests_total", route="/predict", status="499") == 1


async def test_a_client_that_left_is_not_run_through_the_model(
    tiny_model_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued behind a model call when its client leaves: its future is dropped, not run."""
    calls: list[int] = []
    entered = threading.Event()
    release = threading.Event()
    real = batcher_module._stack_and_infer

    def blocking(model: Any, images: list[Any]) -> Any:
        calls.append(len(images))
        if len(calls) == 1:
            entered.set()
            release.wait(ANSWER * 2)
        return real(model, images)

    monkeypatch.setattr(batcher_module, "_stack_and_infer", blocking)
    async with serve(settings_for(tiny_model_base, max_batch_size=1)) as (app, client):
        service = app.state.service
        try:
            first = asyncio.create_task(client.post("/predict", files=upload(good_image(1))))
            await until(entered.is_set, "the first model call")
            leaving = LeavingClient(app, good_image(2))
            await until(
                lambda: service.admission.in_flight == 2 and not service.admission.decoding,
                "the second to be queued",
            )
            leaving.leave.set()
            await until(lambda: service.admission.in_flight == 1, "the room to be released")
        finally:
            release.set()
        assert (await asyncio.wait_for(first, ANSWER)).status_code == 200
        await asyncio.wait_for(leaving.task, ANSWER)
        response = await client.post("/predict", files=upload(good_image(3)))
        assert response.status_code == 200, response.text
        assert calls == [1, 1]  # the first and the third request; never the one that left


async def test_the_schema_says_a_file_has_at_least_one_byte(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    def body_schema(path: str) -> dict[str, Any]:
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        schema = schema["schema"]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    assert body_schema("/predict")["properties"]["file"]["minLength"] == 1
    files = body_schema("/predict/batch")["properties"]["files"]
    assert files["items"]["minLength"] == 1
    assert files["minItems"] == 1


# ---------------------------------------------------------------- item 7: refusals cannot spin


async def test_a_refusal_is_held_so_a_retrying_client_cannot_spin(tiny_model_base: Path) -> None:
    hold = 0.4
    settings = settings_for(
        tiny_model_base, max_images_in_flight=1, max_files_per_request=1, busy_hold_s=hold
    )
    async with serve(settings) as (app, client):
        with app.state.service.admission.admit(1):
            started = time.monotonic()
            response = await client.post("/predict", files=upload(good_image()))
            took = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert took >= hold * 0.9  # held (a lower bound: sleeping is never shorter)
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text


def test_every_documented_start_runs_the_hardened_launcher() -> None:
    """make serve, the image's entrypoint and the harness all run ``python -m app``."""
    from servicekit import server_command

    assert server_command(8000)[1:3] == ["-m", "app"]
    assert "-m app " in (ROOT / "docker" / "entrypoint.sh").read_text()
    printed = subprocess.run(
        ["make", "-s", "-n", "serve"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "-m app " in printed
