"""POST /predict and /predict/batch: classify uploaded images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, UploadFile

from app.api.deps import ServiceDep, UploadDep
from app.api.schemas import BatchPrediction, ErrorDetail, Prediction, UnprocessableDetail
from app.core.config import Settings
from app.core.service import Classification

router = APIRouter(tags=["predict"])
ERRORS = {
    400: {"model": ErrorDetail, "description": "empty file"},
    413: {"model": ErrorDetail, "description": "file, body, pixels or file count over the limit"},
    415: {"model": ErrorDetail, "description": "not an image in an accepted format"},
    422: {"model": UnprocessableDetail, "description": "corrupt image, or no file field"},
    503: {"model": ErrorDetail, "description": "too busy (see Retry-After) or not ready"},
}


async def read_upload(file: UploadFile, settings: Settings) -> bytes:
    """The bytes of one upload, refusing empty files and files over the size limit."""
    name = file.filename or "file"
    too_large = HTTPException(
        413, f"{name} exceeds the upload limit of {settings.max_upload_bytes} bytes"
    )
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise too_large  # known from parsing: don't read it into memory
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise too_large
    if not data:
        raise HTTPException(400, f"{name} is empty")
    return data


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


@router.post("/predict", response_model=Prediction, responses=ERRORS)
async def predict(
    file: Annotated[UploadFile, File(description="a JPEG, PNG, GIF, WebP or BMP image")],
    service: ServiceDep,
    upload: UploadDep,
) -> Prediction:
    """Classify one image sent as multipart field ``file``."""
    image = await read_upload(file, service.settings)
    [result] = await service.classify([image], upload=upload)
    return to_prediction(result)


@router.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS)
async def predict_batch(
    files: Annotated[list[UploadFile], File(description="images, in repeated `files` fields")],
    service: ServiceDep,
    upload: UploadDep,
) -> BatchPrediction:
    """Classify several images; predictions come back in upload order."""
    limit = service.settings.max_files_per_request
    if len(files) > limit:
        raise HTTPException(413, f"{len(files)} files; at most {limit} per request")
    images = [await read_upload(f, service.settings) for f in files]
    names = [f.filename or f"#{i}" for i, f in enumerate(files)]
    results = await service.classify(images, names, upload)
    return BatchPrediction(predictions=[to_prediction(r) for r in results])
