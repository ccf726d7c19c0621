"""TF Serving's REST API: ``/metadata``, ``:predict`` and ``:classify`` (status: ``models.py``).

The conventions (inputs ``image_bytes`` and ``images``, ``{"b64": ...}`` images,
rows and columns) are in ``app/protocols/tfserving/codec.py`` and docs/protocols.md;
errors are ``{"error": ...}`` (``app/core/errors.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.schemas import PROTOCOL_ERRORS, request_body
from app.core.gate import ServiceDep, UploadDep
from app.protocols.tfserving import codec as tfs

router = APIRouter(tags=["tf serving"])
ERRORS = PROTOCOL_ERRORS
PREDICT_BODY = request_body(tfs.PredictRequest, "instances (rows) or inputs (columnar)")
CLASSIFY_BODY = request_body(tfs.ClassifyRequest, "examples, one image each")


@router.get("/v1/models/{name}/metadata", response_model=tfs.MetadataResponse, responses=ERRORS)
async def metadata(name: str, service: ServiceDep) -> tfs.MetadataResponse:
    """The signature of the highest loaded version."""
    return tfs.metadata(service, name, None)


@router.get(
    "/v1/models/{name}/versions/{version}/metadata",
    response_model=tfs.MetadataResponse,
    responses=ERRORS,
)
async def version_metadata(name: str, version: str, service: ServiceDep) -> tfs.MetadataResponse:
    """The signature of one loaded version."""
    return tfs.metadata(service, name, version)


@router.post(
    "/v1/models/{name}:predict",
    response_model=tfs.PredictResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=PREDICT_BODY,
)
async def predict(
    name: str, request: Request, service: ServiceDep, upload: UploadDep
) -> tfs.PredictResponse:
    """Probabilities [N, C] for images or pixels, with the highest loaded version."""
    return await tfs.predict(service, name, None, request, upload)


@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    response_model=tfs.PredictResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=PREDICT_BODY,
)
async def predict_version(
    name: str, version: str, request: Request, service: ServiceDep, upload: UploadDep
) -> tfs.PredictResponse:
    """Probabilities [N, C] for images or pixels, with one loaded version."""
    return await tfs.predict(service, name, version, request, upload)


@router.post(
    "/v1/models/{name}:classify",
    response_model=tfs.ClassifyResponse,
    responses=ERRORS,
    openapi_extra=CLASSIFY_BODY,
)
async def classify(
    name: str, request: Request, service: ServiceDep, upload: UploadDep
) -> tfs.ClassifyResponse:
    """[[label, score], ...] per image, with the highest loaded version."""
    return await tfs.classify(service, name, None, request, upload)


@router.post(
    "/v1/models/{name}/versions/{version}:classify",
    response_model=tfs.ClassifyResponse,
    responses=ERRORS,
    openapi_extra=CLASSIFY_BODY,
)
async def classify_version(
    name: str, version: str, request: Request, service: ServiceDep, upload: UploadDep
) -> tfs.ClassifyResponse:
    """[[label, score], ...] per image, with one loaded version."""
    return await tfs.classify(service, name, version, request, upload)
