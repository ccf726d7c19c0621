"""A real ``uvicorn app.main:app`` process: startup failures, 413s on the wire, hot swap."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from servicekit import Server, start_uvicorn, stop, uvicorn_server, value
from tests.app.helpers import (
    HTTP_TIMEOUT,
    STARTUP_TIMEOUT,
    good_image,
    multipart_chunks,
    upload,
)

CLIENTS = 8
WAIT = 180.0  # for a version to load on a busy machine


def _missing(base: Path) -> Path:
    return base / "nowhere"


def _no_saved_model(base: Path) -> Path:
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "metadata.json").write_text("{}")
    return base / "1"


BROKEN: dict[str, tuple[Callable[[Path], Path], bool]] = {
    # kind: (make the folder and return the path the error must name, serve the base or it)
    "missing-folder": (_missing, False),
    "version-without-saved-model": (_no_saved_model, True),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_uvicorn_exits_when_the_model_cannot_load(tmp_path: Path, kind: str) -> None:
    make, serve_base = BROKEN[kind]
    base = tmp_path / "catdog"
    named = make(base)
    server = start_uvicorn(base if serve_base else named, tmp_path / "stderr.log")
    try:
        returncode = server.process.wait(STARTUP_TIMEOUT)
    finally:
        stop(server)
    log = server.log()
    assert returncode != 0, log
    assert str(named.resolve()) in log, log
    assert "cannot start" in log, log


async def test_real_server_answers_413_to_oversized_uploads(
    tiny_model_base: Path, tmp_path: Path
) -> None:
    """Clients that send the whole body before reading get the 413, not a connection reset."""
    boundary = "catdog-test-boundary"

    async def chunked_body() -> AsyncIterator[bytes]:
        for piece in multipart_chunks(boundary, "file", "stream.jpg", 3_000_000):
            yield piece

    log = tmp_path / "stderr.log"
    with uvicorn_server(tiny_model_base, log, max_upload_bytes=50_000) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
            requests = {
                "file over the upload limit": {"files": upload(os.urandom(80_000))},
                "Content-Length over the body limit": {"files": upload(os.urandom(3_000_000))},
                "chunked body over the limit": {
                    "content": chunked_body(),
                    "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                },
            }
            for what, kwargs in requests.items():
                response = await client.post("/predict", **kwargs)
                assert response.status_code == 413, f"{what}: {response.text}"
                assert "limit" in response.json()["detail"], what
                response = await client.post("/predict", files=upload(good_image()))
                assert response.status_code == 200, f"after {what}: {response.text}"


async def _load(
    client: httpx.AsyncClient, stop: asyncio.Event, versions: list[str], failures: list[str]
) -> None:
    """Send /predict requests one after another until ``stop``; record what happens."""
    seed = 0
    while not stop.is_set():
        seed += 1
        try:
            response = await client.post("/predict", files=upload(good_image(seed % 50)))
        except httpx.HTTPError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        if response.status_code != 200:
            failures.append(f"{response.status_code}: {response.text}")
        else:
            versions.append(response.json()["model_version"])


async def _until(condition: Callable[[], bool], what: str, failures: list[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert not failures, failures[:5]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _fresh_model_export(base: Path) -> Path:
    """Export a newly built article-1 model at 32 x 32 as version 2 (atomically)."""
    import keras

    from training.export import export_model
    from training.models import make_model

    keras.utils.set_random_seed(2)
    model = make_model("article-1", (32, 32, 3), 2)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return export_model(
        model, base, metadata={"architecture": "article-1", "note": "v2"}, version=2
    )


def _install_broken_version(base: Path, number: int) -> None:
    staging = base / ".incoming"
    staging.mkdir()
    shutil.copy(base / "1" / "metadata.json", staging)
    (staging / "saved_model.pb").write_bytes(b"not a SavedModel" * 64)
    staging.rename(base / str(number))


async def test_hot_swap_under_load(model_base: Path, tmp_path: Path) -> None:
    with uvicorn_server(model_base, tmp_path / "stderr.log", poll_interval_s=0.2) as server:
        await _swap_under_load(server, model_base)


async def _swap_under_load(server: Server, base: Path) -> None:
    stop_load = asyncio.Event()
    versions: list[list[str]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        tasks = [asyncio.create_task(_load(client, stop_load, v, failures)) for v in versions]
        try:
            await _until(lambda: all(len(v) >= 2 for v in versions), "first answers", failures)

            # A new version appears while every client keeps sending requests.
            seen = [len(v) for v in versions]
            await asyncio.to_thread(_fresh_model_export, base)
            await _until(lambda: all(v.count("2") >= 3 for v in versions), "version 2", failures)

            # A broken version 3 is refused; version 2 keeps answering.
            _install_broken_version(base, 3)
            await _until(lambda: "refused model version 3" in server.log(), "the refusal", failures)
            counts = [len(v) for v in versions]
            await _until(
                lambda: all(len(v) >= c + 3 for v, c in zip(versions, counts)),
                "answers after the refusal",
                failures,
            )
        finally:
            stop_load.set()
            await asyncio.gather(*tasks)

        assert failures == []
        for answers, before in zip(versions, seen):
            assert set(answers[:before]) == {"1"}  # no version 2 before it was exported
            switch = answers.index("2")
            # Each client switches once, from 1 to 2, and never goes back; never sees 3.
            assert answers[:switch] == ["1"] * switch
            assert answers[switch:] == ["2"] * (len(answers) - switch)

        response = await client.get("/v1/models/catdog")
        assert response.status_code == 200, response.text
        info = response.json()
        assert info["version"] == "2"
        assert info["metadata"]["note"] == "v2"
        response = await client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "2"
        response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        text = response.text
        assert value(text, "catdog_model_version", version="2") == 1.0
        assert value(text, "catdog_model_version", version="1") == 0.0
        assert value(text, "catdog_model_loads_total", result="loaded") == 2
        assert value(text, "catdog_model_loads_total", result="refused") == 1
        assert value(text, "catdog_requests_total", route="/predict", status="200") == sum(
            len(v) for v in versions
        )

    log = server.log()
    assert f"{base / '3'}" in log
    assert "still serving 2" in log
