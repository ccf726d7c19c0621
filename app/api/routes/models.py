"""GET /v1/models/{name}[/versions/{version}]: a version's runtime, contract, metrics, memory.

The same answer is TF Serving's model status (``model_version_status``): both APIs
own this path, so one JSON holds both (docs/protocols.md). Errors carry ``detail``
and TF Serving's ``error`` (``app/core/errors.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.convertors import Convertor, register_url_convertor

from app.api.schemas import ErrorDetail, LoadedVersion, ModelInfo, ModelVersionStatus, VersionStatus
from app.core.gate import ServiceDep
from app.core.service import InferenceService
from app.protocols.common import check_model_name


class Segment(Convertor[str]):
    """A model name or version in a TF Serving path: no ``/`` and no ``:``, so that
    ``/v1/models/catdog:predict`` is the ``:predict`` route, never a model named
    ``catdog:predict`` (``OPTIONS`` on it answers ``Allow: POST``)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", Segment())
router = APIRouter(tags=["models"])
LOCAL_KEYS = {"checkpoint", "data_dir", "run_dir", "cache", "cache_file"}  # paths on a machine


def public(metadata: Any) -> Any:
    """``metadata.json`` without the local file paths it records about training."""
    if isinstance(metadata, dict):
        return {k: public(v) for k, v in metadata.items() if k not in LOCAL_KEYS}
    if isinstance(metadata, list):
        return [public(v) for v in metadata]
    return metadata


ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorDetail, "description": "unknown model, or version not loaded"},
    503: {"model": ErrorDetail, "description": "not ready"},
}


@router.get("/v1/models/{name:segment}", response_model=ModelInfo, responses=ERRORS)
async def model_info(name: str, service: ServiceDep) -> ModelInfo:
    """Describe the model served under ``name`` (its highest loaded version)."""
    return describe(service, name, None)


@router.get(
    "/v1/models/{name:segment}/versions/{version:segment}",
    response_model=ModelInfo,
    responses=ERRORS,
)
async def version_info(name: str, version: str, service: ServiceDep) -> ModelInfo:
    """Describe one loaded version of the model."""
    return describe(service, name, version)


def describe(service: InferenceService, name: str, version: str | None) -> ModelInfo:
    """A loaded version's info, with every loaded version's memory and TF Serving's status."""
    check_model_name(service, name)
    model = service.model_for(version)
    registry = service.registry
    loaded = [
        LoadedVersion(
            version=m.version, runtime=m.runtime_name, memory_bytes=registry.memory_bytes(m)
        )
        for m in registry.loaded
    ]
    meta = public(model.metadata)
    return ModelInfo(
        name=name,
        version=model.version,
        input_size=list(model.contract.image_size),
        class_names=list(model.contract.class_names),
        scaling=model.contract.scaling,
        runtime=model.runtime_name,
        architecture=meta.get("architecture"),
        parameters=meta.get("parameters"),
        created=meta.get("created"),
        metrics=meta.get("metrics") or {},
        metadata=meta,
        memory_bytes=registry.memory_bytes(model),
        loaded_versions=loaded,
        model_version_status=version_statuses(service, name, version),
    )


def version_statuses(
    service: InferenceService, name: str, version: str | None
) -> list[ModelVersionStatus]:
    """TF Serving's status: the loaded versions AVAILABLE, the refused ones END with their
    reason; with ``version``, that one only (404 if it is not loaded)."""
    check_model_name(service, name)
    model = service.model_for(version)
    registry = service.registry
    available = [
        ModelVersionStatus(version=m.version, state="AVAILABLE", status=VersionStatus())
        for m in registry.loaded
        if version is None or m is model
    ]
    refused = [
        ModelVersionStatus(
            version=str(v),
            state="END",
            status=VersionStatus(error_code="UNKNOWN", error_message=why),
        )
        for v, why in registry.refused.items()
        if version is None
    ]
    return available + refused
