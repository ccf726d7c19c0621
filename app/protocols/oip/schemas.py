"""Open Inference Protocol v2 (REST): the request and response schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from app.protocols.numbers import JsonTensor

IMAGE_BYTES = "image_bytes"
IMAGES = "images"
PROBABILITIES = "probabilities"
EXTENSIONS = ["binary_tensor_data", "classification"]
Parameters = dict[str, bool | int | float | str]


class TensorMetadata(BaseModel):
    """An input or output of a model: name, datatype and shape (-1: any size)."""

    name: str = Field(examples=[IMAGE_BYTES])
    datatype: str = Field(examples=["BYTES"])
    shape: list[int] = Field(examples=[[-1]])


class ServerMetadata(BaseModel):
    """GET /v2."""

    name: str = Field(examples=["catdog"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[EXTENSIONS])


class ServerLive(BaseModel):
    """GET /v2/health/live."""

    live: bool


class ServerReady(BaseModel):
    """GET /v2/health/ready."""

    ready: bool


class ModelReady(BaseModel):
    """GET /v2/models/{name}[/versions/{version}]/ready."""

    name: str
    ready: bool


class ModelMetadata(BaseModel):
    """GET /v2/models/{name}[/versions/{version}]."""

    name: str = Field(examples=["catdog"])
    versions: list[str] = Field(examples=[["2", "1"]], description="loaded, highest first")
    platform: str = Field(examples=["litert"], description="the runtime: litert or tensorflow")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    """One input tensor of an inference request."""

    name: str = Field(examples=[IMAGE_BYTES])
    shape: list[int] = Field(examples=[[1]])
    datatype: str = Field(examples=["BYTES"])
    parameters: Parameters = Field(default_factory=dict, examples=[{"content_type": "base64"}])
    data: JsonTensor | None = Field(None, examples=[["/9j/4AAQSkZJRgABAQ..."]])


class RequestOutput(BaseModel):
    """An output asked for, with ``binary_data`` and ``classification`` parameters."""

    name: str = Field(examples=[PROBABILITIES])
    parameters: Parameters = Field(default_factory=dict, examples=[{"classification": 2}])


class InferRequest(BaseModel):
    """POST /v2/models/{name}[/versions/{version}]/infer (the JSON part)."""

    id: str | None = None
    parameters: Parameters = Field(default_factory=dict, examples=[{"binary_data_output": False}])
    inputs: Annotated[list[RequestInput], Field(min_length=1, fail_fast=True)]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of an answer: ``data`` in JSON, or ``binary_data_size`` bytes."""

    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None
    data: list[float] | list[str] | None = None


class InferResponse(BaseModel):
    """The answer of an inference request (the JSON part when binary data follows)."""

    model_name: str = Field(examples=["catdog"])
    model_version: str = Field(examples=["1"])
    id: str | None = None
    outputs: list[ResponseOutput]
