"""POST /predict and /predict/batch: classify uploaded images (multipart bodies).

``read_files`` parses the body as it streams (python-multipart) and keeps in memory only
the parts of one field, refusing as soon as something is wrong: a part over
``max_bytes`` (413 after at most that much), more parts than ``max_files`` (the
route's ``too_many``), more than ``MAX_OTHER_PARTS`` other parts or a body cut before
its closing boundary (400; python-multipart bounds each part's headers: 8 of at most
4,224 bytes). Starlette's form parser spooled each part to disk first and missed the
last two. A body that is not ``multipart/form-data`` has no parts: 422 for the missing
field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.schemas import BatchPrediction, ErrorDetail, Prediction, UnprocessableDetail
from app.core.gate import UploadDep
from app.core.service import ServiceDep

MAX_OTHER_PARTS = 16  # parts of fields the route does not read


@dataclass
class FilePart:
    """One part of the field asked for: its file name (if any) and its bytes."""

    filename: str | None
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks that keep the parts of one field, within bounds."""

    def __init__(
        self, field_name: str, max_files: int, max_bytes: int, too_many: Callable[[], Exception]
    ) -> None:
        self.field = field_name.encode()
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.too_many = too_many
        self.parts: list[FilePart] = []
        self.others = 0
        self.ended = False
        self._current: FilePart | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = b""
        self._value = b""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        """The callbacks ``MultipartParser`` takes: the ``on_*`` methods."""
        return {name: getattr(self, name) for name in dir(self) if name.startswith("on_")}

    def on_part_begin(self) -> None:
        self._current = None
        self._headers = []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        if name is None:
            raise HTTPException(400, "a multipart part has no name in its Content-Disposition")
        if name != self.field:
            self.others += 1
            if self.others > MAX_OTHER_PARTS:
                raise HTTPException(400, f"more than {MAX_OTHER_PARTS} other form fields")
            return  # not read: its bytes are skipped
        if len(self.parts) == self.max_files:
            raise self.too_many()
        filename = options.get(b"filename")
        self._current = FilePart(None if filename is None else filename.decode(errors="replace"))
        self.parts.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:
            return
        if len(part.data) + end - start > self.max_bytes:
            name = part.filename or self.field.decode()
            raise HTTPException(413, f"{name} exceeds the upload limit of {self.max_bytes} bytes")
        part.data += data[start:end]

    def on_part_end(self) -> None:
        self._current = None

    def on_end(self) -> None:
        self.ended = True


async def read_files(
    request: Request,
    field_name: str,
    *,
    max_files: int,
    max_bytes: int,
    too_many: Callable[[], Exception],
) -> list[FilePart]:
    """The parts named ``field_name`` of a multipart body, in order."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        return []
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary in its Content-Type")
    collector = _Collector(field_name, max_files, max_bytes, too_many)
    try:  # a boundary past python-multipart's 256 bytes is refused here
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            if collector.ended:
                continue  # after the closing boundary: ignored
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    if not collector.ended:
        closing = f"--{boundary.decode(errors='replace')}--"
        raise HTTPException(
            400,
            f"the multipart body ended before its closing boundary ({closing}): "
            "the upload was cut short or built wrongly",
        )
    return collector.parts


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
    return Prediction(**vars(result))


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
    return BatchPrediction(predictions=[Prediction(**vars(r)) for r in results])
