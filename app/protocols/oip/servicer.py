"""The Open Inference Protocol's gRPC calls (``inference.GRPCInferenceService``), served by
``app.api.grpc_server.GrpcServer`` beside TF Serving's (``app/protocols/tfserving/servicer.py``).

``ModelInfer`` reads like the REST route: the message's one input, checked as REST
checks it: ``image_bytes`` (BYTES, each element an image file, in ``bytes_contents`` or
``raw_input_contents``) or ``images`` (FP32 [N, H, W, 3] in ``fp32_contents`` or raw
little-endian float32); it answers FP32 ``probabilities`` [N, C], or with the output
parameter ``classification: k`` BYTES ``"score:index:label"``, as
``raw_output_contents`` when the request sent raw inputs, else in ``contents``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from app.core.errors import answer_for
from app.core.service import InferenceService
from app.protocols.common import bad_request, check_model_name, classify_input
from app.protocols.messages import INFERENCE, Call
from app.protocols.oip import codec as oip
from app.protocols.oip import schemas as oip_schemas

M = INFERENCE.messages
#: The field of ModelInferRequest that carries raw tensor data (7), read as views.
RAW_INPUT_CONTENTS = M["ModelInferRequest"].DESCRIPTOR.fields_by_name["raw_input_contents"].number


class InferenceServicer:
    """The calls of ``inference.GRPCInferenceService``."""

    def __init__(self, service: InferenceService, version: str) -> None:
        self.service = service
        self.version = version

    async def ServerLive(self, call: Call) -> Message:  # noqa: N802
        """Live while the process answers."""
        return M["ServerLiveResponse"](live=True)

    async def ServerReady(self, call: Call) -> Message:  # noqa: N802
        """Ready once a model is loaded and warmed up, until shutdown starts."""
        return M["ServerReadyResponse"](ready=self.service.ready)

    async def ModelReady(self, call: Call) -> Message:  # noqa: N802
        """Whether this version (empty: the highest) is loaded and the service accepts work;
        NOT_FOUND for another model's name."""
        request = call.message
        check_model_name(self.service, request.name)
        try:
            oip.model_ready(self.service, request.name, request.version or None)
        except Exception as exc:
            answer = answer_for(exc, self.service.settings)
            if answer is None or answer.status not in (404, 503):
                raise
            return M["ModelReadyResponse"](ready=False)
        return M["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, call: Call) -> Message:  # noqa: N802
        """Name, version and extensions (binary tensor data is REST's; gRPC has raw bytes)."""
        return M["ServerMetadataResponse"](
            name="catdog", version=self.version, extensions=["classification"]
        )

    async def ModelMetadata(self, call: Call) -> Message:  # noqa: N802
        """Inputs, outputs, loaded versions and runtime, as ``GET /v2/models/{name}``."""
        request = call.message
        answer = oip.model_metadata(self.service, request.name, request.version or None)
        return json_format.ParseDict(answer.model_dump(), M["ModelMetadataResponse"]())

    async def ModelInfer(self, call: Call) -> Message:  # noqa: N802
        """Classify image files or pixels: decode the request, predict, encode the answer
        (raw when the request was raw, else in ``contents``)."""
        request = call.message
        check_model_name(self.service, request.model_name)
        version = request.model_version or None
        model = self.service.model_for(version)  # NOT_FOUND before any decoding
        infer_request, given = self.decode_request(call)
        output = oip.output_choice(infer_request, len(model.contract.class_names))
        results = await classify_input(self.service, given, version, call.upload)
        response = M["ModelInferResponse"](
            model_name=request.model_name, model_version=results[0].model_version, id=request.id
        )
        datatype, shape, elements = oip.answer_tensor(results, output)
        tensor = response.outputs.add(name=oip.PROBABILITIES, datatype=datatype, shape=shape)
        if call.raws:
            response.raw_output_contents.append(oip.raw_tensor(elements))
        elif isinstance(elements, np.ndarray):
            tensor.contents.fp32_contents.extend(elements.ravel().tolist())
        else:
            tensor.contents.bytes_contents.extend(elements)
        return response

    def decode_request(self, call: Call) -> tuple[oip_schemas.InferRequest, oip.Input]:
        """The request as REST's ``InferRequest`` (without its data), and its one input,
        checked and decoded as REST's (``oip.only_input``, ``oip.decode_input``)."""
        request, raws = call.message, call.raws
        if len(request.inputs) != 1:
            raise bad_request(f"give exactly one input, {oip.IMAGE_BYTES} or {oip.IMAGES}")
        infer_request = oip_schemas.InferRequest(
            id=request.id or None,
            parameters=parameters(request.parameters),
            inputs=[
                oip_schemas.RequestInput(
                    name=t.name,
                    shape=list(t.shape),
                    datatype=t.datatype,
                    parameters=parameters(t.parameters),
                )
                for t in request.inputs
            ],
            outputs=[
                oip_schemas.RequestOutput(name=o.name, parameters=parameters(o.parameters))
                for o in request.outputs
            ]
            or None,
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


def parameters(given: Mapping[str, Message]) -> oip_schemas.Parameters:
    """A ``map<string, InferParameter>`` as REST's parameters (bool, int, float, str)."""
    found: oip_schemas.Parameters = {}
    for key, value in given.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            found[key] = getattr(value, choice)
    return found
