"""Dependencies shared by the routers.

They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its
thread pool, which costs every request a round trip through a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings, settings_of
from app.core.errors import ModelNotReadyError
from app.core.model import Classifier
from app.core.registry import ModelRegistry


async def get_registry(request: Request) -> ModelRegistry:
    """The app's model registry (created in the lifespan)."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ModelNotReadyError("the service is starting")
    return registry


async def get_classifier(request: Request) -> Classifier:
    """The app's classifier (created in the lifespan)."""
    classifier = getattr(request.app.state, "classifier", None)
    if classifier is None:
        raise ModelNotReadyError("the service is starting")
    return classifier


async def app_settings(request: Request) -> Settings:
    """The settings the lifespan resolved (``dependency_overrides[get_settings]`` included)."""
    return settings_of(request.app)


SettingsDep = Annotated[Settings, Depends(app_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
