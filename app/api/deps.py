"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings, get_settings
from app.core.errors import ModelNotReadyError
from app.core.model import Classifier
from app.core.registry import ModelRegistry


def get_registry(request: Request) -> ModelRegistry:
    """The app's model registry (created in the lifespan)."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ModelNotReadyError("the service is starting")
    return registry


def get_classifier(request: Request) -> Classifier:
    """The app's classifier (created in the lifespan)."""
    classifier = getattr(request.app.state, "classifier", None)
    if classifier is None:
        raise ModelNotReadyError("the service is starting")
    return classifier


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
