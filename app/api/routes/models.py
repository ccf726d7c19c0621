"""GET /v1/models/{name}: the served model's version, runtime, contract and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from app.api.deps import ServiceDep
from app.api.schemas import ErrorDetail, ModelInfo

router = APIRouter(tags=["models"])
LOCAL_KEYS = {"checkpoint", "data_dir", "run_dir", "cache", "cache_file"}  # paths on a machine


def public(metadata: Any) -> Any:
    """``metadata.json`` without the local file paths it records about training."""
    if isinstance(metadata, dict):
        return {k: public(v) for k, v in metadata.items() if k not in LOCAL_KEYS}
    if isinstance(metadata, list):
        return [public(v) for v in metadata]
    return metadata


@router.get(
    "/v1/models/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorDetail}, 503: {"model": ErrorDetail}},
)
async def model_info(name: str, service: ServiceDep) -> ModelInfo:
    """Describe the model served under ``name``."""
    served = service.settings.model_name
    if name != served:
        raise HTTPException(404, f"no model named {name!r}; this service serves {served!r}")
    model = service.model
    meta = public(model.metadata)
    return ModelInfo(
        name=served,
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
    )
