"""Requests and clients of ``bench grpc_load``: the photos as each protocol carries them
(``image_bytes``, pixels, multipart), and one client per protocol on its own connection
(gRPC OIP, TF Serving gRPC, REST OIP, ``/predict``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
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
from bench.harness import (
    ROOT,
    Server,
)
from bench.protocols import (
    Body,
    mean_size,
    request_bodies,
)

MODEL = "catdog"
PROBABILITIES = "probabilities"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
SPLIT_TEST = ROOT / "data" / "split" / "test"
PROTOCOLS = ("grpc", "tfs-grpc", "rest-oip", "predict")
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


class Form:
    """How requests carry photos: protocol, input, the photos of each request (``groups``),
    how to open a client, and the mean payload of a request in bytes."""

    def __init__(
        self, protocol: str, kind: str, groups: list[list[int]], opener: Opener, payload: float
    ) -> None:
        self.protocol, self.kind, self.groups = protocol, kind, groups
        self.opener, self.payload = opener, payload

    @property
    def name(self) -> str:
        """e.g. ``grpc image_bytes``."""
        return f"{self.protocol} {self.kind}"


# ---------------------------------------------------------------- photos and requests


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


def tensor(module: Any, kind: str, group: list[int], data: Data) -> Any:
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


def tensor_bytes(kind: str, groups: list[list[int]], data: Data) -> float:
    """Mean tensor data per request (BYTES: a 4-byte length per element), in bytes."""
    if kind == "image_bytes":
        return float(np.mean([sum(4 + len(data[0][i]) for i in g) for g in groups]))
    return float(len(groups[0]) * data[1][0].nbytes)


def tfs_request(kind: str, group: list[int], data: Data) -> bytes:
    """A TF Serving ``PredictRequest`` for the photos of ``group``, serialized."""
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


def multipart(groups: list[list[int]], photos: list[bytes]) -> list[Body]:
    """``/predict`` bodies (one photo: ``bench.protocols``) or ``/predict/batch`` bodies."""
    if all(len(g) == 1 for g in groups):
        return request_bodies("predict", [photos[g[0]] for g in groups], MODEL)
    bodies: list[Body] = []
    for group in groups:
        files = [("files", (f"photo{i}.jpg", photos[i], "image/jpeg")) for i in group]
        request = httpx.Request("POST", "/predict/batch", files=files)
        bodies.append(("/predict/batch", request.read(), dict(request.headers)))
    return bodies


# ---------------------------------------------------------------- clients


def grpc_opener(address: str, requests: list[list[Any]]) -> Opener:
    """gRPC ``ModelInfer`` clients (``tritonclient.grpc.aio``), one channel each."""
    return _triton_opener(
        lambda: grpcaio.InferenceServerClient(address, channel_args=GRPC_CHANNEL),
        [grpcclient.InferRequestedOutput(PROBABILITIES)],
        requests,
        client_timeout=TIMEOUT,
    )


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


def oip_opener(url: str, requests: list[list[Any]]) -> Opener:
    """REST OIP clients (``tritonclient.http.aio``), binary tensor data both ways."""
    return _triton_opener(
        lambda: httpaio.InferenceServerClient(url.removeprefix("http://"), conn_timeout=TIMEOUT),
        [httpclient.InferRequestedOutput(PROBABILITIES, binary_data=True)],
        requests,
    )


def _triton_opener(
    connect: Callable[[], Any], outputs: list[Any], requests: list[list[Any]], **infer: Any
) -> Opener:
    """Clients of a tritonclient ``aio`` API, each made by ``connect``: it sends the
    prepared ``requests`` in turn, asking for ``outputs``."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        client = connect()

        async def send(turn: int) -> np.ndarray:
            inputs = requests[turn % len(requests)]
            result = await client.infer(MODEL, inputs, outputs=outputs, **infer)
            return result.as_numpy(PROBABILITIES)

        try:
            yield send
        finally:
            await client.close()

    return opened


def predict_opener(url: str, bodies: list[Body]) -> Opener:
    """``/predict`` or ``/predict/batch`` clients (httpx), one connection each."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:

            async def send(turn: int) -> np.ndarray:
                path, content, headers = bodies[turn % len(bodies)]
                response = await client.post(path, content=content, headers=headers)
                answer = response.raise_for_status().json()
                answers = answer.get("predictions", [answer])  # /predict/batch or /predict
                # probabilities are keyed by class, in the model's order (as OIP's columns)
                return np.array([list(a["probabilities"].values()) for a in answers])

            yield send

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
    protocol: str, kind: str, groups: list[list[int]], server: Server, address: str, data: Data
) -> Form:
    """The prepared requests of one protocol and input for ``groups`` of photo numbers."""
    if protocol == "predict":
        bodies = multipart(groups, data[0])
        return Form(
            protocol, "files", groups, predict_opener(server.url, bodies), mean_size(bodies)
        )
    if protocol == "tfs-grpc":
        requests = [tfs_request(kind, g, data) for g in groups]
        payload = float(np.mean([len(r) for r in requests]))  # the whole message
        return Form(protocol, kind, groups, tfs_opener(address, requests), payload)
    module = grpcclient if protocol == "grpc" else httpclient
    requests = [[tensor(module, kind, g, data)] for g in groups]
    if protocol == "grpc":
        opener = grpc_opener(address, requests)
    else:
        opener = oip_opener(server.url, requests)
    return Form(protocol, kind, groups, opener, tensor_bytes(kind, groups, data))
