"""The clients of ``bench protocols``: the same photos as each protocol carries them, and
one client per protocol on its own connection.

A :class:`Form` is a protocol and an input (``image_bytes``, ``images`` as pixels, a
file), the photos of each request, and how to open one client; a client's ``send(n)``
sends request ``n`` and answers the probabilities, or raises.
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
from app.protocols.tfserving.servicer import DT_FLOAT, DT_STRING, PREDICTION_SERVICE
from bench.harness import ROOT

MODEL, PROBABILITIES = "catdog", "probabilities"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
# every form of one photo per request; the first is the reference of the agreement
PROTOCOLS = ("grpc", "tfs-grpc", "oip-binary", "oip-json", "predict", "json-numbers")
TIMEOUT = 120.0  # seconds; a request of 32 photos as pixels is 19 MB
# one TCP connection per gRPC client, as each HTTP client has its own: gRPC shares a
# connection between channels to the same address unless told not to
GRPC_CHANNEL = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.use_local_subchannel_pool", 1),
]

Send = Callable[[int], Awaitable[np.ndarray]]  # request number -> probabilities [N, 2]
Opener = Callable[[], AbstractAsyncContextManager[Send]]  # one client, its own connection
Data = tuple[list[bytes], np.ndarray]  # the photo files, and their pixels [N, 224, 224, 3]
Body = tuple[str, bytes, dict[str, str]]  # an HTTP request: path, content, headers


@dataclass
class Form:
    """How requests carry photos, and the mean payload of a request in bytes."""

    protocol: str
    kind: str
    groups: list[list[int]]
    opener: Opener
    payload: float

    @property
    def name(self) -> str:
        """e.g. ``grpc image_bytes``."""
        return f"{self.protocol} {self.kind}"


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


def groups_of(size: int, count: int, photos: int) -> list[list[int]]:
    """``count`` requests of ``size`` photos, taken in turn from the list."""
    return [[(k * size + j) % photos for j in range(size)] for k in range(count)]


def http_body(protocol: str, kind: str, group: list[int], data: Data) -> Body:
    """One HTTP request of ``group``: multipart ``/predict`` (or ``/predict/batch``), OIP
    JSON with base64 files, or TF Serving ``:predict`` with pixels as JSON numbers."""
    photos, pixels = data
    if protocol == "predict":
        path, field = ("/predict", "file") if len(group) == 1 else ("/predict/batch", "files")
        files = [(field, (f"photo{i}.jpg", photos[i], "image/jpeg")) for i in group]
        request = httpx.Request("POST", path, files=files)
        return path, request.read(), dict(request.headers)
    if protocol == "json-numbers":
        content = {"instances": pixels[group].tolist()}
        path = f"/v1/models/{MODEL}:predict"
    else:  # oip-json
        data_ = [base64.b64encode(photos[i]).decode() for i in group]
        tensor = {"name": kind, "shape": [len(group)], "datatype": "BYTES", "data": data_}
        content, path = {"inputs": [tensor]}, f"/v2/models/{MODEL}/infer"
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


def http_opener(url: str, protocol: str, bodies: list[Body], address: str = "") -> Opener:
    """httpx clients, one connection each (from ``address``, if given), sending the
    prepared ``bodies`` in turn."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        transport = httpx.AsyncHTTPTransport(local_address=address or None)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, transport=transport) as client:

            async def send(turn: int) -> np.ndarray:
                path, content, headers = bodies[turn % len(bodies)]
                response = await client.post(path, content=content, headers=headers)
                return http_answer(protocol, response.raise_for_status().json())

            yield send

    return opened


def triton_input(module: Any, kind: str, group: list[int], data: Data) -> Any:
    """An ``InferInput`` of tritonclient's ``module`` (grpc or http), its data set once."""
    photos, pixels = data
    if kind == "image_bytes":
        array = np.array([photos[i] for i in group], dtype=object)
        infer_input = module.InferInput(kind, [len(group)], "BYTES")
    else:
        array = pixels[group]
        infer_input = module.InferInput(kind, list(array.shape), "FP32")
    if module is httpclient:  # binary tensor data, not JSON
        infer_input.set_data_from_numpy(array, binary_data=True)
    else:  # gRPC: raw_input_contents
        infer_input.set_data_from_numpy(array)
    return infer_input


def triton_opener(protocol: str, where: str, requests: list[list[Any]]) -> Opener:
    """tritonclient ``aio`` clients: gRPC ``ModelInfer`` or REST OIP with binary data."""
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
            inputs = requests[turn % len(requests)]
            result = await client.infer(MODEL, inputs, outputs=outputs, **options)
            return result.as_numpy(PROBABILITIES)

        try:
            yield send
        finally:
            await client.close()

    return opened


def tfs_request(kind: str, group: list[int], data: Data) -> bytes:
    """A TF Serving ``PredictRequest`` for the photos of ``group``, serialized (as
    ``tf.make_tensor_proto`` builds it)."""
    photos, pixels = data
    request = TFSERVING.messages["PredictRequest"]()
    request.model_spec.name = MODEL
    tensor = request.inputs[kind]
    if kind == "image_bytes":
        tensor.dtype = DT_STRING
        tensor.string_val.extend(photos[i] for i in group)
        sizes = [len(group)]
    else:
        tensor.dtype = DT_FLOAT
        tensor.tensor_content = pixels[group].astype("<f4").tobytes()
        sizes = list(pixels[group].shape)
    for size in sizes:
        tensor.tensor_shape.dim.add(size=size)
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


def make_form(
    protocol: str, kind: str, groups: list[list[int]], url: str, address: str, data: Data
) -> Form:
    """The prepared requests of one protocol and input for ``groups`` of photo numbers
    (``url``: the REST server; ``address``: its gRPC host:port)."""
    if protocol in ("predict", "oip-json", "json-numbers"):
        bodies = [http_body(protocol, kind, g, data) for g in groups]
        payload = float(np.mean([len(content) for _, content, _ in bodies]))
        kind = "files" if protocol == "predict" else kind
        return Form(protocol, kind, groups, http_opener(url, protocol, bodies), payload)
    if protocol == "tfs-grpc":
        requests = [tfs_request(kind, g, data) for g in groups]
        payload = float(np.mean([len(r) for r in requests]))  # the whole message
        return Form(protocol, kind, groups, tfs_opener(address, requests), payload)
    module = grpcclient if protocol == "grpc" else httpclient
    inputs = [[triton_input(module, kind, g, data)] for g in groups]
    where = address if protocol == "grpc" else url.removeprefix("http://")
    if kind == "image_bytes":  # BYTES: a 4-byte length per element
        payload = float(np.mean([sum(4 + len(data[0][i]) for i in g) for g in groups]))
    else:
        payload = float(len(groups[0]) * data[1][0].nbytes)
    return Form(protocol, kind, groups, triton_opener(protocol, where, inputs), payload)
