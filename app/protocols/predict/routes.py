"""POST /predict and /predict/batch: classify uploaded images.

The multipart body is read by ``app.protocols.predict.multipart`` (each part bounded while it
streams, a second ``file`` refused, a body cut before its closing boundary a
400), so the request body schema in OpenAPI is written out here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from app.api.schemas import BatchPrediction, ErrorDetail, Prediction, UnprocessableDetail
from app.core.gate import ServiceDep, UploadDep
from app.core.service import Classification
from app.protocols.predict.multipart import FilePart, read_files

router = APIRouter(tags=["predict"])
ERRORS = {
    400: {
        "model": ErrorDetail,
        "description": "empty file, malformed multipart body, or a second `file` field",
    },
    413: {"model": ErrorDetail, "description": "file, body, pixels or file count over the limit"},
    415: {"model": ErrorDetail, "description": "not an image in an accepted format"},
    422: {"model": UnprocessableDetail, "description": "corrupt image, or no file field"},
    503: {"model": ErrorDetail, "description": "too busy (see Retry-After) or not ready"},
}
FILE_SCHEMA = {  # one uploaded file: at least one byte
    "type": "string",
    "format": "binary",
    "contentMediaType": "application/octet-stream",
    "minLength": 1,
}


def form_body(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart form with one required field."""
    form = {"type": "object", "properties": {field: schema}, "required": [field]}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    }


def missing(field: str) -> RequestValidationError:
    """The 422 FastAPI answers for a missing form field."""
    error = {"type": "missing", "loc": ("body", field), "msg": "Field required", "input": None}
    return RequestValidationError([error])


def contents(parts: list[FilePart], field: str, default_name: str) -> list[bytes]:
    """The bytes of each part; 422 if there is none, 400 for an empty one."""
    if not parts:
        raise missing(field)
    for position, part in enumerate(parts):
        if not part.data:
            name = part.filename or default_name.format(position)
            raise HTTPException(400, f"{name} is empty")
    images = []
    for part in parts:  # one file in two copies at a time, not the whole batch
        images.append(bytes(part.data))
        part.data = bytearray()
    return images


def to_prediction(result: Classification) -> Prediction:
    """The API's view of one classification."""
    return Prediction(
        label=result.label,
        class_index=result.class_index,
        probabilities=result.probabilities,
        model_version=result.model_version,
        known=result.known,
        ood_score=result.ood_score,
    )


@router.post(
    "/predict",
    response_model=Prediction,
    responses=ERRORS,
    openapi_extra=form_body(
        "file", {**FILE_SCHEMA, "description": "a JPEG, PNG, GIF, WebP or BMP image"}
    ),
)
async def predict(request: Request, service: ServiceDep, upload: UploadDep) -> Prediction:
    """Classify one image sent as multipart field ``file``."""
    parts = await read_files(
        request,
        "file",
        max_files=1,
        max_bytes=service.settings.max_upload_bytes,
        too_many=lambda: HTTPException(
            400, "/predict takes one image in one `file` field; send several to /predict/batch"
        ),
    )
    [image] = contents(parts, "file", "file")
    [result] = await service.classify([image], upload=upload)
    return to_prediction(result)


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    responses=ERRORS,
    openapi_extra=form_body(
        "files",
        {
            "type": "array",
            "items": FILE_SCHEMA,
            "minItems": 1,
            "description": "images, in repeated `files` fields",
        },
    ),
)
async def predict_batch(
    request: Request, service: ServiceDep, upload: UploadDep
) -> BatchPrediction:
    """Classify several images; predictions come back in upload order."""
    limit = service.settings.max_files_per_request
    parts = await read_files(
        request,
        "files",
        max_files=limit,
        max_bytes=service.settings.max_upload_bytes,
        too_many=lambda: HTTPException(
            413, f"more than {limit} files; at most {limit} per request"
        ),
    )
    images = contents(parts, "files", "#{}")
    names = [part.filename or f"#{i}" for i, part in enumerate(parts)]
    results = await service.classify(images, names, upload)
    return BatchPrediction(predictions=[to_prediction(r) for r in results])
