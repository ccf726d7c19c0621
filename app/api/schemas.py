"""Response bodies of the API (in the OpenAPI schema at /docs), and OpenAPI helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

F = TypeVar("F", bound=Callable[..., Any])
VERSION_PATH = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}


class Prediction(BaseModel):
    """The class of one image."""

    label: str = Field(examples=["cat"], description="the most probable class")
    class_index: int = Field(examples=[0], description="index of label in class_names")
    probabilities: dict[str, float] = Field(
        examples=[{"cat": 0.97, "dog": 0.03}], description="per class, summing to 1"
    )
    model_version: str = Field(examples=["1"], description="the version that answered")
    known: bool | None = Field(
        None,
        examples=[True],
        description="false: the photo looks unlike any cat or dog photo the model learnt from "
        "(the label is still the more likely of the two); null: the model has no such signal",
    )
    ood_score: float | None = Field(
        None, description="out-of-distribution score; above the model's threshold: known=false"
    )


class BatchPrediction(BaseModel):
    """Predictions in upload order."""

    predictions: list[Prediction]


class VersionStatus(BaseModel):
    """TF Serving's StatusProto: ``OK``, or why a version is not available."""

    error_code: str = Field("OK", examples=["OK"])
    error_message: str = ""


class ModelVersionStatus(BaseModel):
    """TF Serving's ModelVersionStatus: AVAILABLE (loaded) or END (refused)."""

    version: str = Field(examples=["1"])
    state: str = Field(examples=["AVAILABLE"])
    status: VersionStatus


class LoadedVersion(BaseModel):
    """A loaded version and its memory."""

    version: str = Field(examples=["1"])
    runtime: str = Field(examples=["litert"])
    memory_bytes: int | None = Field(
        None,
        description="resident memory the process grew by while this version loaded and warmed"
        " up (approximate; the first version also holds the runtime's one-time cost)",
    )


class ModelInfo(BaseModel):
    """The served model and its held-out metrics; also TF Serving's model status."""

    name: str
    version: str
    input_size: list[int] = Field(description="[height, width]")
    class_names: list[str]
    scaling: str
    runtime: str = Field(
        examples=["litert"], description="what runs the model: litert or tensorflow"
    )
    architecture: str | None = None
    parameters: int | None = None
    created: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict, description="all of metadata.json")
    memory_bytes: int | None = Field(None, description="this version's, as in loaded_versions")
    loaded_versions: list[LoadedVersion] = Field(
        default_factory=list, description="every loaded version (version policy), highest first"
    )
    model_version_status: list[ModelVersionStatus] = Field(
        default_factory=list,
        description="TF Serving's status: loaded versions AVAILABLE, refused ones END",
    )


class Status(BaseModel):
    """Liveness or readiness."""

    status: str
    model_version: str | None = None


class ErrorDetail(BaseModel):
    """An error answer: a human-readable ``detail``."""

    detail: str


class UnprocessableDetail(BaseModel):
    """422: text for a corrupt image; FastAPI's list of errors for a missing or invalid field."""

    detail: str | list[dict[str, Any]] = Field(
        examples=["cannot decode image: image file is truncated"],
        description="text, or a list of {loc, msg, type} (a request that didn't validate)",
    )


class ErrorBody(BaseModel):
    """An error answer of both protocols."""

    error: str = Field(examples=["no model named 'dog'; this service serves 'catdog'"])


#: The error answers of the protocols' prediction routes, for the OpenAPI page.
PROTOCOL_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "malformed request, or a tensor off the contract"},
    404: {"model": ErrorBody, "description": "unknown model, or version not loaded"},
    413: {"model": ErrorBody, "description": "body, image or image count over the limit"},
    415: {"model": ErrorBody, "description": "not an image in an accepted format"},
    422: {"model": ErrorBody, "description": "corrupt image"},
    503: {"model": ErrorBody, "description": "too busy (see Retry-After) or not ready"},
}


def request_body(model: type[BaseModel], description: str) -> dict[str, object]:
    """``openapi_extra`` documenting ``model`` as the JSON body of a route that reads its own."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": _inline(schema, definitions)}},
        }
    }


def _inline(node: object, definitions: dict[str, object]) -> object:
    """A JSON schema with every local ``$ref`` replaced by its definition (no recursion)."""
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str):
            return _inline(definitions[reference.rsplit("/", 1)[-1]], definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, definitions) for value in node]
    return node


async def path_version(request: Request) -> str | None:
    """The ``{version}`` of a versioned path, else None (async: no thread-pool trip)."""
    return request.path_params.get("version")


VersionDep = Annotated[str | None, Depends(path_version)]


def versioned(
    router: APIRouter,
    method: str,
    path: str,
    openapi_extra: dict[str, Any] | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Serve the endpoint at ``path`` with ``{at}`` as "" and as ``/versions/{version}``."""

    def register(endpoint: F) -> F:
        for at, more in (("", {}), ("/versions/{version}", {"parameters": [VERSION_PATH]})):
            extra = {**(openapi_extra or {}), **more} or None
            path_at = path.replace("{at}", at)
            router.add_api_route(
                path_at, endpoint, methods=[method], openapi_extra=extra, **options
            )
        return endpoint

    return register
