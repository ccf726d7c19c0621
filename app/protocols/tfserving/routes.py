"""TF Serving's REST API: ``/metadata``, ``:predict`` and ``:classify`` (its model status
is ``app/api/routes.py``'s); the conventions are ``codec.py``'s."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.schemas import PROTOCOL_ERRORS, VersionDep, request_body, versioned
from app.core.gate import ServiceDep, UploadDep
from app.protocols.tfserving import codec as tfs

router = APIRouter(tags=["tf serving"])
PREDICT_BODY = request_body(tfs.PredictRequest, "instances (rows) or inputs (columnar)")
CLASSIFY_BODY = request_body(tfs.ClassifyRequest, "examples, one image each")


@versioned(
    router,
    "GET",
    "/v1/models/{name}{at}/metadata",
    response_model=tfs.MetadataResponse,
    responses=PROTOCOL_ERRORS,
)
async def metadata(name: str, service: ServiceDep, version: VersionDep) -> tfs.MetadataResponse:
    """The signature of the highest loaded version, or of the one named."""
    return tfs.metadata(service, name, version)


@versioned(
    router,
    "POST",
    "/v1/models/{name}{at}:predict",
    response_model=tfs.PredictResponse,
    response_model_exclude_none=True,
    responses=PROTOCOL_ERRORS,
    openapi_extra=PREDICT_BODY,
)
async def predict(
    name: str, request: Request, service: ServiceDep, upload: UploadDep, version: VersionDep
) -> tfs.PredictResponse:
    """Probabilities [N, C] for images or pixels, with the highest loaded version or the
    one named."""
    return await tfs.predict(service, name, version, request, upload)


@versioned(
    router,
    "POST",
    "/v1/models/{name}{at}:classify",
    response_model=tfs.ClassifyResponse,
    responses=PROTOCOL_ERRORS,
    openapi_extra=CLASSIFY_BODY,
)
async def classify(
    name: str, request: Request, service: ServiceDep, upload: UploadDep, version: VersionDep
) -> tfs.ClassifyResponse:
    """[[label, score], ...] per image, with the highest loaded version or the one named."""
    return await tfs.classify(service, name, version, request, upload)
