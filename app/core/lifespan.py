"""Startup and shutdown: load and warm the model, run the batcher and the version watcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.core import heap
from app.core.batcher import Batcher
from app.core.config import Settings, get_settings
from app.core.errors import ModelLoadError
from app.core.model import Classifier
from app.core.registry import ModelRegistry
from catdog.budget import PixelBudget

log = logging.getLogger("catdog")


def resolve_settings(app: FastAPI) -> Settings:
    """The settings, honouring a test's ``dependency_overrides[get_settings]``."""
    return app.dependency_overrides.get(get_settings, get_settings)()


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. ``taskset`` or a cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model before serving (fail fast on a bad folder); drain on shutdown."""
    settings = resolve_settings(app)
    app.state.settings = settings
    registry = ModelRegistry(settings.model_dir, app.state.metrics, settings.max_batch_size)
    try:
        # No local name for the model: this frame lives as long as the app, and would
        # keep the first version in memory after a new one is swapped in.
        await asyncio.to_thread(registry.load_initial)
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        raise RuntimeError(f"catdog cannot start: {exc}") from exc
    batcher = Batcher(
        settings.max_batch_size,
        settings.batch_timeout_ms,
        settings.max_queue,
        app.state.metrics,
        settings.max_batch_wait_ms,
    )
    batcher.start()
    workers = settings.decode_workers or usable_cpus()
    budget = PixelBudget(settings.decode_pixel_budget)
    classifier = Classifier(registry, batcher, settings.max_pixels, workers, budget)
    heap.settle()  # full collections would otherwise stall serving for ~200 ms
    watcher = None
    if settings.poll_interval_s > 0:
        watcher = asyncio.create_task(registry.watch(settings.poll_interval_s), name="watcher")
    app.state.registry, app.state.batcher, app.state.classifier = registry, batcher, classifier
    app.state.accepting = True
    log.info(
        "ready: version %s, max batch %d, timeout %.1f ms, queue %d",
        registry.current.version,
        settings.max_batch_size,
        settings.batch_timeout_ms,
        settings.max_queue,
    )
    try:
        yield
    finally:
        app.state.accepting = False
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await batcher.stop()
        classifier.close()
        heap.thaw()
