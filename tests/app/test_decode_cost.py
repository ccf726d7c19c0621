"""A real ``uvicorn`` process against files whose claimed size dwarfs their bytes.

A 300-byte PNG claiming 7000x7000 pixels, or a JPEG whose frame header was patched
to claim that size, used to be decoded (about a second of CPU each, answered 200);
32 of them in one 9 KB ``/predict/batch`` held a core for seconds and two such
requests filled every image slot. They are now refused from their headers, and a
normal request sent during a storm of them is answered promptly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servicekit import Server, uvicorn_server
from tests.app.helpers import HTTP_TIMEOUT, batch_upload, good_image, upload
from tests.catdog import crafted
from tests.catdog.test_preprocessing import jpeg_claiming

# One attacker's batch cannot fill the 64 image slots by itself, so the probe measures the
# decode cost the attack imposes. Two batches in flight at once do fill them, for as long
# as their refusals take, and admission answers 503 then, as for any full house.
ATTACKERS = 1
PROBE_BOUND_S = 1.5  # the bound for a normal request during an attack


@pytest.fixture(scope="module")
def server(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service as ``python -m app`` runs it, with its default limits."""
    log = tmp_path_factory.mktemp("decode-cost") / "server.log"
    with uvicorn_server(tiny_model_base, log) as started:
        yield started


def storm_batch() -> list[tuple[str, tuple[str, bytes, str]]]:
    """32 files of ~300 bytes each claiming 49 megapixels (under the 50 MP limit)."""
    files = [crafted.png_header_only(7000, 7000)] * 16 + [jpeg_claiming((7000, 7000))] * 16
    return batch_upload(files)


async def test_a_file_claiming_far_more_pixels_than_bytes_gets_422(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        for data in (crafted.png_header_only(7000, 7000), jpeg_claiming((7000, 7000))):
            response = await client.post("/predict", files=upload(data))
            assert response.status_code == 422, response.text
            assert "pixels per byte" in response.json()["detail"]
        short = crafted.white_png(2000, 2000, missing=2000 * 2001 // 2)
        response = await client.post("/predict", files=upload(short))
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("a truncated PNG file")


async def test_a_normal_request_is_prompt_during_a_storm_of_them(server: Server) -> None:
    stop = asyncio.Event()
    statuses: list[int] = []

    async def attack(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response = await client.post("/predict/batch", files=storm_batch())
            statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=ATTACKERS + 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT, limits=limits) as c:
        attackers = [asyncio.create_task(attack(c)) for _ in range(ATTACKERS)]
        try:
            await asyncio.sleep(1.0)
            probes = []
            for _ in range(5):
                started = time.perf_counter()
                response = await c.post("/predict", files=upload(good_image()))
                probes.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
        finally:
            stop.set()
            await asyncio.gather(*attackers)
    assert statuses and set(statuses) == {422}, statuses
    assert max(probes) < PROBE_BOUND_S, probes
