"""Fixtures of the service tests, built on ``tiny_model_base`` from ``tests/conftest.py``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from servicekit import Server
from tests.app.helpers import Served, serve, settings_for
from tests.app.protocols import grpc_protocol_server


@pytest.fixture
def model_base(tiny_model_base: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model base folder, for tests that add or break versions."""
    return Path(shutil.copytree(tiny_model_base, tmp_path / "catdog"))


@pytest_asyncio.fixture(scope="module", params=["litert", "tensorflow"])
async def served(tiny_model_base: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """A fresh app serving the tiny model, shared by one test module; each test that uses it
    runs once per runtime (the suite's one switch between LiteRT and TensorFlow)."""
    async with serve(settings_for(tiny_model_base, runtime=request.param)) as started:
        yield started


@pytest.fixture
def client(served: Served) -> httpx.AsyncClient:
    """The client of the module's shared app."""
    return served.client


@pytest.fixture(scope="session")
def protocols_server(
    tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real service (versions 1 and 2, REST and gRPC: ``grpc_protocol_server``) shared
    by the protocol modules (test_answers, test_v2, test_tfserving, test_tfserving_grpc,
    test_grpc), which only read from it: started once by each worker that runs them."""
    with grpc_protocol_server(tiny_model_base, tmp_path_factory.mktemp("protocols")) as started:
        yield started
