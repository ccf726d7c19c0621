"""GET /v1/models/{name}: the served model's version, contract and metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from app.api.deps import RegistryDep, SettingsDep
from app.api.schemas import ErrorDetail, ModelInfo

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorDetail}, 503: {"model": ErrorDetail}},
)
async def model_info(name: str, registry: RegistryDep, settings: SettingsDep) -> ModelInfo:
    """Describe the model served under ``name``."""
    if name != settings.model_name:
        raise HTTPException(
            404, f"no model named {name!r}; this service serves {settings.model_name!r}"
        )
    model = registry.current
    meta = model.metadata
    return ModelInfo(
        name=settings.model_name,
        version=model.version,
        input_size=list(model.contract.image_size),
        class_names=list(model.contract.class_names),
        scaling=model.contract.scaling,
        architecture=meta.get("architecture"),
        parameters=meta.get("parameters"),
        created=meta.get("created"),
        metrics=meta.get("metrics") or {},
        metadata=meta,
    )
