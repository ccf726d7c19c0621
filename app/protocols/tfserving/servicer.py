"""TensorFlow Serving's gRPC API (``PredictionService``, ``ModelService``) with the
conventions of its REST API (``routes.py``; docs/protocols.md).
"""

from __future__ import annotations

import numpy as np
from fastapi import HTTPException
from google.protobuf.message import Message

from app.api.routes import version_statuses
from app.core.config import Settings
from app.core.service import InferenceService
from app.protocols.messages import TFSERVING, Call
from app.protocols.numbers import MOST_RANK
from app.protocols.oip.codec import (
    check_count,
    check_model_name,
    classify_input,
    pixel_tensor,
    probability_table,
)
from app.protocols.tfserving import routes as tfs
from app.protocols.tfserving.routes import DT_FLOAT, DT_STRING

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
T = TFSERVING.messages
ERROR_CODES = {"OK": 0, "UNKNOWN": 2}  # tensorflow.error.Code, as the REST status names them


class TfServingServicer:
    """The calls of ``tensorflow.serving.PredictionService`` and ``ModelService``."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def Predict(self, call: Call) -> Message:  # noqa: N802
        """Probabilities [N, C] for images or pixels."""
        request = call.message
        version = self._version(request.model_spec)
        if set(request.output_filter) - {tfs.PROBABILITIES}:
            raise HTTPException(
                400,
                f"output_filter {list(request.output_filter)}: "
                f"the one output is {tfs.PROBABILITIES!r}",
            )
        inputs = dict(request.inputs)
        if len(inputs) != 1 or not set(inputs) <= {tfs.IMAGE_BYTES, tfs.IMAGES}:
            raise HTTPException(
                400, f"inputs {sorted(inputs)}; give one of {tfs.IMAGE_BYTES}, {tfs.IMAGES}"
            )
        [(name, tensor)] = inputs.items()
        if name == tfs.IMAGE_BYTES:
            files = _strings(tensor, name, self.service.settings)
        else:
            size = self.service.model_for(version).contract.image_size
            files = _floats(tensor, name, self.service.settings, size)
        results = await classify_input(self.service, files, version, call.upload)
        table = probability_table(results)
        output = T["TensorProto"](dtype=DT_FLOAT, tensor_content=table.astype("<f4").tobytes())
        output.tensor_shape.dim.add(size=table.shape[0])
        output.tensor_shape.dim.add(size=table.shape[1])
        return T["PredictResponse"](
            model_spec=self._spec(request.model_spec, results[0].model_version),
            outputs={tfs.PROBABILITIES: output},
        )

    async def Classify(self, call: Call) -> Message:  # noqa: N802
        """Per example, every class with its score, in the contract's order."""
        request = call.message
        version = self._version(request.model_spec)
        kind = request.input.WhichOneof("kind")
        if kind is None:
            raise HTTPException(400, "input holds no examples")
        given = getattr(request.input, kind)
        context = _images_in(given.context) if kind == "example_list_with_context" else {}
        if context:
            raise HTTPException(
                400,
                f"context holds bytes features ({', '.join(sorted(context))}), which would "
                "join every example's image: put one image in each example",
            )
        examples = given.examples
        check_count(len(examples), self.service.settings)
        files = [_image_of(example, position) for position, example in enumerate(examples)]
        results = await classify_input(self.service, files, version, call.upload)
        classifications = [
            T["Classifications"](
                classes=[T["Class"](label=k, score=p) for k, p in r.probabilities.items()]
            )
            for r in results
        ]
        return T["ClassificationResponse"](
            model_spec=self._spec(request.model_spec, results[0].model_version),
            result=T["ClassificationResult"](classifications=classifications),
        )

    async def GetModelMetadata(self, call: Call) -> Message:  # noqa: N802
        """The signature ``serving_default``, as ``GET /v1/models/{name}/metadata``."""
        request = call.message
        version = self._version(request.model_spec)
        fields = set(request.metadata_field)
        if fields != {"signature_def"}:
            raise HTTPException(
                400, f"metadata_field {sorted(fields)}: the one field served is 'signature_def'"
            )
        model = self.service.model_for(version)
        signatures = tfs.signature_map(model.contract)
        packed = T["Any"](
            type_url=f"type.googleapis.com/{signatures.DESCRIPTOR.full_name}",
            value=signatures.SerializeToString(),
        )
        return T["GetModelMetadataResponse"](
            model_spec=self._spec(request.model_spec, model.version),
            metadata={"signature_def": packed},
        )

    async def GetModelStatus(self, call: Call) -> Message:  # noqa: N802
        """Loaded versions AVAILABLE, refused ones END (all of them unless one is named)."""
        request = call.message
        version = self._version(request.model_spec)
        status = T["ModelVersionStatus"]
        return T["GetModelStatusResponse"](
            model_version_status=[
                status(
                    version=int(s.version),
                    state=s.state,  # type: ignore[arg-type]
                    status=T["StatusProto"](
                        error_code=ERROR_CODES[s.status.error_code],
                        error_message=s.status.error_message,
                    ),
                )
                for s in version_statuses(self.service, request.model_spec.name, version)
            ]
        )

    def _version(self, spec: Message) -> str | None:
        """The version ``spec`` names (None: the highest), its model and signature checked."""
        check_model_name(self.service, spec.name)
        tfs.check_signature(spec.signature_name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise HTTPException(
                404, f"no version labelled {spec.version_label!r}: versions have no labels here"
            )
        return str(spec.version.value) if choice == "version" else None

    def _spec(self, asked: Message, version: str) -> Message:
        """The ``model_spec`` of an answer: the model, version and signature."""
        spec = T["ModelSpec"](name=asked.name, signature_name=tfs.SIGNATURE)
        spec.version.value = int(version)
        return spec


def _shape(tensor: Message, name: str, values: tuple[str, ...]) -> list[int]:
    """The tensor's sizes, once it is known to hold its values in ``values`` only."""
    used = {f.name for f, _ in tensor.ListFields()} - {"dtype", "tensor_shape", "version_number"}
    if used - set(values):
        raise HTTPException(
            400,
            f"input {name}: values in {', '.join(sorted(used - set(values)))}; "
            f"its values go in {' or '.join(values)}",
        )
    if tensor.tensor_shape.unknown_rank:
        raise HTTPException(400, f"input {name}: give its shape (unknown_rank is set)")
    sizes = [d.size for d in tensor.tensor_shape.dim]
    if len(sizes) > MOST_RANK or any(s < 0 for s in sizes):
        raise HTTPException(400, f"input {name}: shape {sizes} is not a tensor's shape")
    return sizes


def _strings(tensor: Message, name: str, settings: Settings) -> list[bytes]:
    """``image_bytes``: DT_STRING, shape [N], [N, 1] or [] (one file), a file per element."""
    if tensor.dtype != DT_STRING:
        raise HTTPException(
            400, f"input {name} is DT_STRING (image files); send pixels as {tfs.IMAGES}"
        )
    sizes = _shape(tensor, name, ("string_val",))
    count = len(tensor.string_val)  # before any element becomes a Python object
    if sizes not in ([], [count], [count, 1]) or (not sizes and count != 1):
        raise HTTPException(400, f"input {name}: shape {sizes} but {count} elements")
    check_count(count, settings)
    return list(tensor.string_val)


def _floats(tensor: Message, name: str, settings: Settings, size: tuple[int, int]) -> np.ndarray:
    """``images``: DT_FLOAT [N, H, W, 3] of the version's (H, W) from ``tensor_content``
    or ``float_val`` (one value: every pixel, as TensorFlow reads it)."""
    if tensor.dtype != DT_FLOAT:
        raise HTTPException(
            400, f"input {name} is DT_FLOAT (pixels); send image files as {tfs.IMAGE_BYTES}"
        )
    sizes = _shape(tensor, name, ("tensor_content", "float_val"))
    height, width = size
    if len(sizes) != 4 or sizes[1:] != [height, width, 3]:
        raise HTTPException(400, f"input {name}: shape {sizes}; expected [N, {height}, {width}, 3]")
    check_count(sizes[0], settings)
    if tensor.tensor_content and tensor.float_val:
        raise HTTPException(400, f"input {name}: both tensor_content and float_val")
    if len(tensor.float_val) == 1:  # at most a full request's pixels: the shape is checked
        values = np.full(sizes, tensor.float_val[0], dtype=np.float32)
    else:
        values = np.array(tensor.float_val, dtype=np.float32)
    raw = tensor.tensor_content or None
    return pixel_tensor(sizes, f"input {name}", settings, raw, None if raw else values)


def _images_in(example: Message) -> dict[str, Message]:
    """An example's image features by name: ``image_bytes``, else every bytes feature."""
    features = example.features.feature
    if tfs.IMAGE_BYTES in features:
        return {tfs.IMAGE_BYTES: features[tfs.IMAGE_BYTES]}
    return {k: f for k, f in features.items() if f.WhichOneof("kind") == "bytes_list"}


def _image_of(example: Message, position: int) -> bytes:
    """An example's image: its ``image_bytes`` feature, else its only bytes feature."""
    found = list(_images_in(example).values())
    if len(found) != 1 or found[0].WhichOneof("kind") != "bytes_list":
        raise HTTPException(
            400, f"example {position}: give one image, as the bytes feature {tfs.IMAGE_BYTES!r}"
        )
    values = found[0].bytes_list.value
    if len(values) != 1:
        raise HTTPException(
            400, f"example {position}: {len(values)} values in its image feature, not 1"
        )
    return values[0]
