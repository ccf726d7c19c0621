"""POST /predict and /predict/batch: classify uploaded images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, UploadFile

from app.api.deps import ClassifierDep, SettingsDep
from app.api.schemas import BatchPrediction, ErrorDetail, Prediction, UnprocessableDetail
from app.core.config import Settings

router = APIRouter(tags=["predict"])
ERRORS = {
    400: {"model": ErrorDetail, "description": "empty file"},
    413: {"model": ErrorDetail, "description": "file, body, pixels or file count over the limit"},
    415: {"model": ErrorDetail, "description": "not an image"},
    422: {"model": UnprocessableDetail, "description": "corrupt image, or no file field"},
    503: {"model": ErrorDetail, "description": "queue full (see Retry-After) or not ready"},
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


@router.post("/predict", response_model=Prediction, responses=ERRORS)
async def predict(
    file: Annotated[UploadFile, File(description="a JPEG, PNG, GIF, WebP or BMP image")],
    classifier: ClassifierDep,
    settings: SettingsDep,
) -> Prediction:
    """Classify one image sent as multipart field ``file``."""
    [prediction] = await classifier.predict([await read_upload(file, settings)])
    return prediction


@router.post("/predict/batch", response_model=BatchPrediction, responses=ERRORS)
async def predict_batch(
    files: Annotated[list[UploadFile], File(description="images, in repeated `files` fields")],
    classifier: ClassifierDep,
    settings: SettingsDep,
) -> BatchPrediction:
    """Classify several images; predictions come back in upload order."""
    if len(files) > settings.files_per_request:
        raise HTTPException(
            413, f"{len(files)} files; at most {settings.files_per_request} per request"
        )
    classifier.check_room(len(files))  # a busy service says so before reading every file
    images = [await read_upload(f, settings) for f in files]
    names = [f.filename or f"#{i}" for i, f in enumerate(files)]
    return BatchPrediction(predictions=await classifier.predict(images, names))
