"""Helpers of the protocol tests: a two-version model folder, a real server, /predict answers.

``two_versions(tiny_model_base, folder)`` copies the trained tiny model as version 1
and exports an untrained tiny model (``tests.tiny_models``, other weights, other
probabilities) as version 2. ``protocol_server`` serves it in a real uvicorn process
with the version policy ``latest:2``, so both versions answer by URL and requests
naming no version get version 2.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from catdog.preprocessing import preprocess
from servicekit import Server, free_port, uvicorn_server
from tests.app.helpers import good_image
from tests.tiny_models import export_tiny

TOLERANCE = 1e-6  # every route answers /predict's probabilities for the same image
CLASSES = ("cat", "dog")


def two_versions(tiny_model_base: Path, folder: Path) -> Path:
    """A model base folder: the trained tiny model as 1, an untrained one as 2."""
    base = folder / "catdog"
    shutil.copytree(tiny_model_base / "1", base / "1")
    export_tiny(base / "2", seed=11)
    return base


@contextlib.contextmanager
def protocol_server(base: Path, log: Path, **settings: object) -> Iterator[Server]:
    """A real service on ``base`` with versions 1 and 2 loaded (no polling)."""
    options: dict[str, object] = {"version_policy": "latest:2", "poll_interval_s": 0}
    with uvicorn_server(base, log, **{**options, **settings}) as server:
        yield server


@contextlib.contextmanager
def grpc_protocol_server(tiny_model_base: Path, folder: Path) -> Iterator[Server]:
    """``protocol_server`` on two versions in ``folder``, gRPC on ``server.grpc_port``."""
    port = free_port()
    base = two_versions(tiny_model_base, folder)
    with protocol_server(base, folder / "server.log", grpc_address=f"127.0.0.1:{port}") as s:
        s.grpc_port = port  # type: ignore[attr-defined]
        yield s


def images(count: int = 3) -> list[bytes]:
    """Small JPEGs of several seeds."""
    return [good_image(seed) for seed in range(count)]


def pixels(files: list[bytes]) -> np.ndarray:
    """The client-side preprocessing of ``files``: float32 [N, 32, 32, 3] in [0, 1]."""
    return np.stack([preprocess(data, (32, 32)) for data in files])


def predicted(url: str, files: list[bytes]) -> np.ndarray:
    """/predict's probabilities [N, 2] for ``files`` (one request each)."""
    rows = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for data in files:
            response = client.post("/predict", files={"file": ("i.jpg", data, "image/jpeg")})
            assert response.status_code == 200, response.text
            rows.append([response.json()["probabilities"][c] for c in CLASSES])
    return np.array(rows)
