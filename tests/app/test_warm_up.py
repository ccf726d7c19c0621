"""Warm-up: the first answer after ``/readyz`` is not the slow one.

A real ``python -m app`` process on the shipped model: as soon as ``/readyz``
answers 200, one photo is posted, then more one at a time. The first answer must
come within 3x the median of the ones after it (issue 30 measured 61 ms against a
steady 15 ms before every batch size, the decoding threads and the image plugins
were warmed up). Two cores are shared with other work here, so one stray pause
can land on any request: five fresh processes are measured and their median
ratio is the one checked.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx

from servicekit import start_uvicorn, stop, wait_ready
from tests.app.helpers import good_image

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "catdog"
STEADY = 20
PROCESSES = 5


def _post(client: httpx.Client, body: bytes) -> float:
    started = time.perf_counter()
    response = client.post("/predict", files={"file": ("cat.jpg", body, "image/jpeg")})
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def _first_and_steady(log: Path, body: bytes) -> tuple[float, float]:
    server = start_uvicorn(SHIPPED, log, poll_interval_s=0)
    try:
        wait_ready(server)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
            first = _post(client, body)
            return first, statistics.median(_post(client, body) for _ in range(STEADY))
    finally:
        stop(server)


def test_first_answer_after_ready_is_within_3x_the_steady_median(tmp_path: Path) -> None:
    body = good_image()
    runs = [_first_and_steady(tmp_path / f"server-{i}.log", body) for i in range(PROCESSES)]
    shown = ", ".join(f"{f * 1e3:.1f} ms vs {s * 1e3:.1f} ms" for f, s in runs)
    assert statistics.median(f / s for f, s in runs) <= 3, f"first vs steady median: {shown}"
