"""New model versions: a broken one is refused (logged, counted) while the old one serves."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.core import heap
from servicekit import value
from tests.app.helpers import good_image, metrics_text, serve, settings_for, upload

POLL = 0.1
WAIT = 120.0  # loading a version can be slow on a busy machine


async def wait_for_metric(
    client: httpx.AsyncClient, name: str, at_least: float, **labels: str
) -> str:
    """Poll /metrics until ``name{labels}`` reaches ``at_least``; return the text."""
    deadline = time.monotonic() + WAIT
    while True:
        text = await metrics_text(client)
        if value(text, name, **labels) >= at_least:
            return text
        assert time.monotonic() < deadline, f"{name}{labels} never reached {at_least}"
        await asyncio.sleep(POLL)


async def assert_serving(client: httpx.AsyncClient, version: str) -> None:
    """/predict, /readyz and /v1/models/catdog all say ``version``."""
    response = await client.post("/predict", files=upload(good_image()))
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == version
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == version
    response = await client.get("/v1/models/catdog")
    assert response.status_code == 200, response.text
    assert response.json()["version"] == version


def _garbage_saved_model(folder: Path, good: Path) -> None:
    folder.mkdir()
    shutil.copy(good / "metadata.json", folder)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel" * 50)


def _missing_metadata(folder: Path, good: Path) -> None:
    shutil.copytree(good, folder)
    (folder / "metadata.json").unlink()


def _bad_metadata(folder: Path, good: Path) -> None:
    shutil.copytree(good, folder)
    (folder / "metadata.json").write_text('{"class_names": ["cat"]}')


BROKEN: dict[str, Callable[[Path, Path], None]] = {
    "garbage-saved-model": _garbage_saved_model,
    "missing-metadata": _missing_metadata,
    "bad-metadata": _bad_metadata,
}


@pytest.mark.parametrize("kind", list(BROKEN))
async def test_broken_version_is_refused(
    model_base: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger="catdog")
    async with serve(settings_for(model_base, poll_interval_s=POLL)) as (_, client):
        await assert_serving(client, "1")
        staging = model_base / ".incoming"
        BROKEN[kind](staging, model_base / "1")
        staging.rename(model_base / "3")

        text = await wait_for_metric(client, "catdog_model_loads_total", 1, result="refused")
        assert value(text, "catdog_model_version", version="1") == 1.0
        assert value(text, "catdog_model_version", version="3") == 0.0
        await assert_serving(client, "1")

        refusals = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and "refused model version 3" in r.getMessage()
        ]
        assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
        assert str(model_base / "3") in refusals[0].getMessage()

        # The refused folder is not reloaded on every poll while its files stay the same...
        await asyncio.sleep(10 * POLL)
        text = await metrics_text(client)
        assert value(text, "catdog_model_loads_total", result="refused") == 1

        # ... but once it is repaired, it is loaded.
        shutil.rmtree(model_base / "3")
        shutil.copytree(model_base / "1", model_base / ".repaired")
        (model_base / ".repaired").rename(model_base / "3")
        await wait_for_metric(client, "catdog_model_version", 1, version="3")
        await assert_serving(client, "3")


async def test_lower_version_is_ignored(model_base: Path) -> None:
    """Only a higher version replaces the served one."""
    shutil.copytree(model_base / "1", model_base / "5")
    async with serve(settings_for(model_base, poll_interval_s=POLL)) as (_, client):
        await assert_serving(client, "5")
        shutil.copytree(model_base / "1", model_base / ".tmp")
        (model_base / ".tmp").rename(model_base / "4")
        shutil.copytree(model_base / "1", model_base / ".tmp")
        (model_base / ".tmp").rename(model_base / "6")
        await wait_for_metric(client, "catdog_model_version", 1, version="6")
        await assert_serving(client, "6")
        text = await metrics_text(client)
        assert value(text, "catdog_model_loads_total", result="loaded") == 2
        assert value(text, "catdog_model_loads_total", result="refused") == 0


async def test_a_replaced_version_is_freed_and_the_heap_frozen_again(model_base: Path) -> None:
    """The heap is frozen while serving; a swap must not keep the old version alive."""
    async with serve(settings_for(model_base, poll_interval_s=POLL)) as (app, client):
        assert gc.get_freeze_count() > 0  # frozen after start-up
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        old = weakref.ref(app.state.service.model)
        shutil.copytree(model_base / "1", model_base / ".tmp")
        (model_base / ".tmp").rename(model_base / "2")
        await wait_for_metric(client, "catdog_model_version", 1, version="2")
        await assert_serving(client, "2")
        deadline = time.monotonic() + WAIT
        while old() is not None or gc.get_freeze_count() == 0:
            assert time.monotonic() < deadline, "version 1 is still in memory after the swap"
            await asyncio.sleep(POLL)
    assert gc.get_freeze_count() == 0  # shutdown thaws it
    assert gc.get_threshold() == heap.DEFAULT_THRESHOLD  # and gives the collector back
