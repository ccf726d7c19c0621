"""GET /healthz (the process is alive) and /readyz (a warmed-up model is serving)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.schemas import ErrorDetail, Status
from app.core.gate import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """Liveness: 200 while the process answers."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorDetail}})
async def readyz(service: ServiceDep) -> Status | JSONResponse:
    """Readiness: 200 once the model is loaded and warmed up, 503 before and when stopping."""
    if not service.ready:
        return JSONResponse({"status": "not ready", "detail": "model not loaded"}, status_code=503)
    return Status(status="ready", model_version=service.model.version)
