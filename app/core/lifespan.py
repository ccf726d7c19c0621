"""Startup and shutdown: start the app's ``InferenceService`` before serving, drain it after."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.core.errors import ModelLoadError
from app.core.service import InferenceService

log = logging.getLogger("catdog")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model before serving (fail fast on a bad folder); drain on shutdown."""
    service: InferenceService = app.state.service
    try:
        await service.start()
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        raise RuntimeError(f"catdog cannot start: {exc}") from exc
    try:
        yield
    finally:
        await service.stop()
