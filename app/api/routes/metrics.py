"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.core.gate import ServiceDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Requests, latency, queue wait, inference time, batch sizes, model version and runtime."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
