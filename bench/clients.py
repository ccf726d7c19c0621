"""The clients of ``bench protocols``: one photo per request as each protocol carries it,
and one client per protocol on its own connection.

A :class:`Form` is a protocol, its prepared requests (photo ``n`` is request ``n``) and
how to open one client; a client's ``send(n)`` sends request ``n`` and answers the
probabilities, or raises. ``upload_memory`` builds its bodies with the same functions.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from app.protocols.messages import TFSERVING
from app.protocols.tfserving.servicer import DT_STRING, PREDICTION_SERVICE
from bench.harness import ROOT

MODEL, PROBABILITIES = "catdog", "probabilities"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
PROTOCOLS = ("grpc", "tfs-grpc", "oip-binary", "oip-json", "predict", "json-numbers")
TIMEOUT = 120.0  # seconds
# one TCP connection per gRPC client, as each HTTP client has its own: gRPC shares a
# connection between channels to the same address unless told not to
GRPC_CHANNEL = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.use_local_subchannel_pool", 1),
]

Send = Callable[[int], Awaitable[np.ndarray]]  # request number -> probabilities [N, 2]
Opener = Callable[[], AbstractAsyncContextManager[Send]]  # one client, its own connection
Data = tuple[list[bytes], np.ndarray | None]  # the photo files, their pixels [N, 224, 224, 3]
Body = tuple[str, bytes, dict[str, str]]  # an HTTP request: path, content, headers


@dataclass
class Form:
    """A protocol and its input, how to open a client, the mean request size in bytes."""

    protocol: str
    kind: str
    opener: Opener
    payload: float


def photo_files(folder: Path, count: int) -> list[Path]:
    """The fixtures, then up to ``count`` photos of ``folder`` (``cat/``, ``dog/`` or
    ``cat.*.jpg``, ``dog.*.jpg``), cats and dogs in turn, none twice by name."""
    files = sorted(FIXTURES.glob("*.jpg"))
    per_class = [
        sorted(folder.glob(f"{label}.*.jpg")) + sorted((folder / label).glob("*.jpg"))
        for label in ("cat", "dog")
    ]
    seen = {f.name for f in files}
    extra = [p for pair in zip(*per_class) for p in pair if p.name not in seen]
    return files + extra[:count]


def http_body(protocol: str, group: list[int], data: Data) -> Body:
    """One HTTP request of the photos ``group``: multipart ``/predict`` (``/predict/batch``),
    OIP JSON with base64 files, or TF Serving ``:predict`` with pixels as JSON numbers."""
    photos, pixels = data
    if protocol == "predict":
        path, field = ("/predict", "file") if len(group) == 1 else ("/predict/batch", "files")
        files = [(field, (f"photo{i}.jpg", photos[i], "image/jpeg")) for i in group]
        request = httpx.Request("POST", path, files=files)
        return path, request.read(), dict(request.headers)
    if protocol == "json-numbers":
        assert pixels is not None
        content, path = {"instances": pixels[group].tolist()}, f"/v1/models/{MODEL}:predict"
    else:  # oip-json
        data_ = [base64.b64encode(photos[i]).decode() for i in group]
        tensor = {"name": "image_bytes", "shape": [len(group)], "datatype": "BYTES"}
        content, path = {"inputs": [tensor | {"data": data_}]}, f"/v2/models/{MODEL}/infer"
    return path, json.dumps(content).encode(), {"content-type": "application/json"}


def http_answer(protocol: str, answer: dict[str, Any]) -> np.ndarray:
    """The probabilities [N, 2] of an HTTP answer, columns in the model's class order."""
    if protocol == "predict":
        rows = answer.get("predictions", [answer])  # /predict/batch or /predict
        return np.array([list(r["probabilities"].values()) for r in rows])
    if protocol == "json-numbers":
        return np.array(answer["predictions"])
    output = next(o for o in answer["outputs"] if o["name"] == PROBABILITIES)
    return np.array(output["data"]).reshape(output["shape"])


def http_opener(url: str, protocol: str, bodies: list[Body]) -> Opener:
    """httpx clients, one connection each, sending the prepared ``bodies`` in turn."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:

            async def send(turn: int) -> np.ndarray:
                path, content, headers = bodies[turn % len(bodies)]
                response = await client.post(path, content=content, headers=headers)
                return http_answer(protocol, response.raise_for_status().json())

            yield send

    return opened


def triton_opener(protocol: str, where: str, photos: list[bytes]) -> Opener:
    """tritonclient ``aio`` clients: gRPC ``ModelInfer`` (raw input contents) or REST OIP
    with binary tensor data, ``image_bytes`` of one photo each, the inputs made once."""
    module = grpcclient if protocol == "grpc" else httpclient
    inputs = []
    for photo in photos:
        infer_input = module.InferInput("image_bytes", [1], "BYTES")
        binary = {} if module is grpcclient else {"binary_data": True}
        infer_input.set_data_from_numpy(np.array([photo], dtype=object), **binary)
        inputs.append([infer_input])
    if protocol == "grpc":
        outputs = [grpcclient.InferRequestedOutput(PROBABILITIES)]
        options: dict[str, Any] = {"client_timeout": TIMEOUT}
    else:
        outputs = [httpclient.InferRequestedOutput(PROBABILITIES, binary_data=True)]
        options = {}

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        if protocol == "grpc":
            client = grpcaio.InferenceServerClient(where, channel_args=GRPC_CHANNEL)
        else:
            client = httpaio.InferenceServerClient(where, conn_timeout=TIMEOUT)

        async def send(turn: int) -> np.ndarray:
            request = inputs[turn % len(inputs)]
            result = await client.infer(MODEL, request, outputs=outputs, **options)
            return result.as_numpy(PROBABILITIES)

        try:
            yield send
        finally:
            await client.close()

    return opened


def tfs_request(group: list[int], photos: list[bytes]) -> bytes:
    """A TF Serving ``PredictRequest`` of the photos ``group`` as ``image_bytes``
    (DT_STRING), serialized as ``tf.make_tensor_proto`` builds it."""
    request = TFSERVING.messages["PredictRequest"]()
    request.model_spec.name = MODEL
    tensor = request.inputs["image_bytes"]
    tensor.dtype = DT_STRING
    tensor.string_val.extend(photos[i] for i in group)
    tensor.tensor_shape.dim.add(size=len(group))
    return request.SerializeToString()


def tfs_opener(address: str, requests: list[bytes]) -> Opener:
    """TF Serving ``Predict`` clients (``grpc.aio``), one channel each."""
    path = TFSERVING.services[PREDICTION_SERVICE]["Predict"].path
    answer_type = TFSERVING.messages["PredictResponse"]

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        channel = grpc.aio.insecure_channel(address, options=GRPC_CHANNEL)
        predict = channel.unary_unary(path, response_deserializer=answer_type.FromString)

        async def send(turn: int) -> np.ndarray:
            answer = await predict(requests[turn % len(requests)], timeout=TIMEOUT)
            output = answer.outputs[PROBABILITIES]
            shape = [d.size for d in output.tensor_shape.dim]
            return np.frombuffer(output.tensor_content, "<f4").reshape(shape)

        try:
            yield send
        finally:
            await channel.close()

    return opened


def failure(exc: Exception) -> str:
    """What went wrong, as a status: gRPC code, HTTP status or the exception's type."""
    if isinstance(exc, InferenceServerException) and exc.status():
        return str(exc.status()).removeprefix("StatusCode.")
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, httpx.HTTPStatusError):
        return str(exc.response.status_code)
    return type(exc).__name__


def make_form(protocol: str, url: str, address: str, data: Data) -> Form:
    """The prepared requests of ``protocol``, one photo each (``url``: the REST server;
    ``address``: its gRPC host:port)."""
    photos, n = data[0], range(len(data[0]))
    if protocol in ("predict", "oip-json", "json-numbers"):
        bodies = [http_body(protocol, [i], data) for i in n]
        payload = float(np.mean([len(content) for _, content, _ in bodies]))
        kind = {"predict": "files", "json-numbers": "images"}.get(protocol, "image_bytes")
        return Form(protocol, kind, http_opener(url, protocol, bodies), payload)
    if protocol == "tfs-grpc":
        requests = [tfs_request([i], photos) for i in n]
        payload = float(np.mean([len(r) for r in requests]))  # the whole message
        return Form(protocol, "image_bytes", tfs_opener(address, requests), payload)
    where = address if protocol == "grpc" else url.removeprefix("http://")
    payload = float(np.mean([4 + len(p) for p in photos]))  # BYTES: a 4-byte length each
    return Form(protocol, "image_bytes", triton_opener(protocol, where, photos), payload)
