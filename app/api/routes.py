"""The service's own routes: ``/healthz``, ``/readyz``, ``/metrics``, the model info at
``/v1/models/{name}[/versions/{version}]`` (also TF Serving's model status,
docs/protocols.md) and the try-it page ``/`` (``app/static/index.html``, whose
Content-Security-Policy lets it talk to this server only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.convertors import Convertor, register_url_convertor

from app.api.schemas import (
    ErrorDetail,
    LoadedVersion,
    ModelInfo,
    ModelVersionStatus,
    Status,
    VersionStatus,
)
from app.core.service import InferenceService, ServiceDep
from app.protocols.oip.codec import check_model_name


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
router = APIRouter()


@router.get("/healthz", tags=["health"], response_model=Status)
async def healthz() -> Status:
    """Liveness: 200 while the process answers."""
    return Status(status="ok")


@router.get(
    "/readyz", tags=["health"], response_model=Status, responses={503: {"model": ErrorDetail}}
)
async def readyz(service: ServiceDep) -> Status | JSONResponse:
    """Readiness: 200 once the model is loaded and warmed up, 503 before and when stopping."""
    if not service.ready:
        return JSONResponse({"status": "not ready", "detail": "model not loaded"}, status_code=503)
    return Status(status="ready", model_version=service.model.version)


@router.get("/metrics", tags=["metrics"], response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Requests, latency, queue wait, inference time, batch sizes, model version and runtime."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


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


@router.get(
    "/v1/models/{name:segment}", tags=["models"], response_model=ModelInfo, responses=ERRORS
)
async def model_info(name: str, service: ServiceDep) -> ModelInfo:
    """Describe the model served under ``name`` (its highest loaded version)."""
    return describe(service, name, None)


@router.get(
    "/v1/models/{name:segment}/versions/{version:segment}",
    tags=["models"],
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


INDEX_PATH = Path(__file__).resolve().parents[1] / "static" / "index.html"
INDEX_HTML = INDEX_PATH.read_text(encoding="utf-8")

#: Inline script and style only; images from the chosen file (blob:); requests to this origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'unsafe-inline'",
        "style-src 'unsafe-inline'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/", tags=["page"], response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    """The upload page."""
    return HTMLResponse(INDEX_HTML, headers=HEADERS)
