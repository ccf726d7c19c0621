"""GET /healthz (the process is alive) and /readyz (a warmed-up model is serving)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.schemas import ErrorDetail, Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """Liveness: 200 while the process answers."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorDetail}})
async def readyz(request: Request) -> Status | JSONResponse:
    """Readiness: 200 once the model is loaded and warmed up, 503 before and when stopping."""
    registry = getattr(request.app.state, "registry", None)
    if not getattr(request.app.state, "accepting", False) or registry is None or not registry.ready:
        return JSONResponse({"status": "not ready", "detail": "model not loaded"}, status_code=503)
    return Status(status="ready", model_version=registry.current.version)
