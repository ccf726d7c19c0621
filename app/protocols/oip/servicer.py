"""The Open Inference Protocol's gRPC calls (``inference.GRPCInferenceService``), served by
``app.api.grpc_server.GrpcServer`` beside TF Serving's (``app/protocols/tfserving/servicer.py``).

``ModelInfer`` reads like the REST route, in three steps (``InferenceServicer``):

* ``decode_request``: the message's one input, checked as REST checks it
  (``oip.only_input``, ``oip.decode_input``): ``image_bytes`` (BYTES, each element an
  image file, in ``bytes_contents`` or ``raw_input_contents``) or ``images`` (FP32
  [N, H, W, 3] in ``fp32_contents`` or raw little-endian float32);
* ``predict``: ``InferenceService.classify`` or ``classify_tensor``;
* ``encode_response``: FP32 ``probabilities`` [N, C], or with the output parameter
  ``classification: k`` BYTES ``"score:index:label"``; as ``raw_output_contents`` when
  the request sent raw inputs, else in ``contents``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import grpc
import numpy as np
from google.protobuf.message import Message

from app.core.errors import answer_for
from app.core.gate import Upload
from app.core.service import Classification, InferenceService
from app.protocols import wire
from app.protocols.common import bad_request, check_model_name
from app.protocols.messages import INFERENCE
from app.protocols.oip import codec as oip
from app.protocols.oip import schemas as oip_schemas

M = INFERENCE.messages
#: The field of ModelInferRequest that carries raw tensor data (7).
RAW_INPUT_CONTENTS = M["ModelInferRequest"].DESCRIPTOR.fields_by_name["raw_input_contents"].number


class InferCall(NamedTuple):
    """A ``ModelInferRequest`` parsed without its ``raw_input_contents``, which are
    ``raws``: views into the received bytes (``read_infer_call``); ``upload``: the call
    counted as on its way since before its message was read (the batcher waits for it)."""

    message: Message
    raws: list[memoryview]
    upload: Upload | None = None


def read_infer_call(body: bytes) -> InferCall:
    """``body`` as a ``ModelInferRequest``, its raw tensor data left where it arrived
    (parsing it would copy it twice: into the message, then out of it)."""
    split = wire.split_field(body, RAW_INPUT_CONTENTS)
    if split is None:  # thousands of top-level fields, or a group: protobuf's to read
        message = M["ModelInferRequest"].FromString(body)
        raws = [memoryview(b) for b in message.raw_input_contents]
        message.ClearField("raw_input_contents")
        return InferCall(message, raws)
    rest, raws = split
    return InferCall(M["ModelInferRequest"].FromString(rest), raws)


class InferenceServicer:
    """The calls of ``inference.GRPCInferenceService``."""

    def __init__(self, service: InferenceService, version: str) -> None:
        self.service = service
        self.version = version

    # ------------------------------------------------------------ health and metadata

    async def ServerLive(self, request: Message, context: object) -> Message:  # noqa: N802
        """Live while the process answers."""
        return M["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Message, context: object) -> Message:  # noqa: N802
        """Ready once a model is loaded and warmed up, until shutdown starts."""
        return M["ServerReadyResponse"](ready=self.service.ready)

    async def ModelReady(self, request: Message, context: object) -> Message:  # noqa: N802
        """Whether this version (empty: the highest) is loaded and the service accepts work;
        NOT_FOUND for another model's name."""
        check_model_name(self.service, request.name)
        try:
            oip.model_ready(self.service, request.name, request.version or None)
        except Exception as exc:
            answer = answer_for(exc, self.service.settings)
            if answer is None or answer.status not in (404, 503):
                raise
            return M["ModelReadyResponse"](ready=False)
        return M["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, request: Message, context: object) -> Message:  # noqa: N802
        """Name, version and extensions (binary tensor data is REST's; gRPC has raw bytes)."""
        return M["ServerMetadataResponse"](
            name="catdog", version=self.version, extensions=["classification"]
        )

    async def ModelMetadata(self, request: Message, context: object) -> Message:  # noqa: N802
        """Inputs, outputs, loaded versions and runtime, as ``GET /v2/models/{name}``."""
        answer = oip.model_metadata(self.service, request.name, request.version or None)
        tensor = M["ModelMetadataResponse.TensorMetadata"]
        return M["ModelMetadataResponse"](
            name=answer.name,
            versions=answer.versions,
            platform=answer.platform,
            inputs=[tensor(**t.model_dump()) for t in answer.inputs],
            outputs=[tensor(**t.model_dump()) for t in answer.outputs],
        )

    # ------------------------------------------------------------ inference

    async def ModelInfer(  # noqa: N802
        self, call: InferCall, context: grpc.aio.ServicerContext
    ) -> Message:
        """Classify image files or pixels: decode the request, predict, encode the answer."""
        request = call.message
        check_model_name(self.service, request.model_name)
        version = request.model_version or None
        model = self.service.model_for(version)  # NOT_FOUND before any decoding
        infer_request, given = self.decode_request(call)
        output = oip.output_choice(infer_request, len(model.contract.class_names))
        results = await self.predict(given, version, call.upload)
        return self.encode_response(call, results, output)

    def decode_request(
        self, call: InferCall
    ) -> tuple[oip_schemas.InferRequest, oip.EncodedImages | oip.Pixels]:
        """The request as REST's ``InferRequest`` (without its data), and its one input."""
        request, raws = call.message, call.raws
        if len(request.inputs) != 1:
            raise bad_request(f"give exactly one input, {oip.IMAGE_BYTES} or {oip.IMAGES}")
        inputs = [
            oip_schemas.RequestInput(
                name=t.name,
                shape=list(t.shape),
                datatype=t.datatype,
                parameters=parameters(t.parameters),
            )
            for t in request.inputs
        ]
        outputs = [
            oip_schemas.RequestOutput(name=o.name, parameters=parameters(o.parameters))
            for o in request.outputs
        ]
        infer_request = oip_schemas.InferRequest(
            id=request.id or None,
            parameters=parameters(request.parameters),
            inputs=inputs,
            outputs=outputs or None,
        )
        tensor = oip.only_input(infer_request)
        message = request.inputs[0]
        settings = self.service.settings
        if raws:
            if len(raws) != 1:
                raise bad_request(f"{len(raws)} raw_input_contents for 1 input")
            if message.HasField("contents"):
                raise bad_request(f"input {tensor.name} has both contents and raw_input_contents")
            return infer_request, oip.decode_input(tensor, raws[0], settings)
        contents = message.contents
        used = [f.name for f, _ in contents.ListFields()]
        wanted = "bytes_contents" if tensor.name == oip.IMAGE_BYTES else "fp32_contents"
        if used and used != [wanted]:
            raise bad_request(
                f"input {tensor.name} is {tensor.datatype}: its elements go in {wanted} "
                f"or raw_input_contents, not {', '.join(used)}"
            )
        if tensor.name == oip.IMAGE_BYTES:
            files = list(contents.bytes_contents)
            return infer_request, oip.decode_input(tensor, None, settings, files)
        tensor.data = np.array(contents.fp32_contents, np.float32)  # type: ignore[assignment]
        return infer_request, oip.decode_input(tensor, None, settings)

    async def predict(
        self, given: oip.EncodedImages | oip.Pixels, version: str | None, upload: Upload | None
    ) -> list[Classification]:
        """The service's answer for each image, in order."""
        if isinstance(given, oip.EncodedImages):
            return await self.service.classify(given.files, upload=upload, version=version)
        return await self.service.classify_tensor(given.array, version, upload)

    def encode_response(
        self, call: InferCall, results: list[Classification], output: oip.OutputChoice
    ) -> Message:
        """``probabilities``, raw when the request was raw, else in ``contents``."""
        request, raw = call.message, bool(call.raws)
        response = M["ModelInferResponse"](
            model_name=request.model_name, model_version=results[0].model_version, id=request.id
        )
        tensor = response.outputs.add(name=oip.PROBABILITIES)
        table = oip.probability_table(results)
        if output.classes:
            classes = list(results[0].probabilities)
            strings = [
                s.encode() for row in table for s in oip.top_classes(row, classes, output.classes)
            ]
            tensor.datatype, tensor.shape[:] = "BYTES", [len(results), output.classes]
            if raw:
                response.raw_output_contents.append(
                    b"".join(len(s).to_bytes(4, "little") + s for s in strings)
                )
            else:
                tensor.contents.bytes_contents.extend(strings)
        else:
            tensor.datatype, tensor.shape[:] = "FP32", list(table.shape)
            if raw:
                response.raw_output_contents.append(table.astype("<f4").tobytes())
            else:
                tensor.contents.fp32_contents.extend(table.ravel().tolist())
        return response


def parameters(given: Mapping[str, Message]) -> oip_schemas.Parameters:
    """A ``map<string, InferParameter>`` as REST's parameters (bool, int, float, str)."""
    found: oip_schemas.Parameters = {}
    for key, value in given.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            found[key] = getattr(value, choice)
    return found
