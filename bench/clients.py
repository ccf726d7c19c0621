"""Requests as each protocol carries photos, and clients that send them prepared.

:func:`request_for` builds one request (path or gRPC method, headers, body) of some
files, or of pixels, in any of :data:`PROTOCOLS`; :func:`opener` opens one client on
its own connection (httpx, or a ``grpc.aio`` channel sending the serialized message)
that ``bench.serve_load`` drives. ``bench protocols`` and ``bench upload_memory`` both
send what these build.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np

from app.protocols.messages import INFERENCE, TFSERVING
from app.protocols.tfserving.servicer import DT_STRING, PREDICTION_SERVICE
from bench.harness import ROOT
from bench.serve_load import Client, Send

MODEL = "catdog"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
# the files to /predict (/predict/batch), OIP binary, OIP and TF Serving JSON with base64,
# gRPC ModelInfer and TF Serving Predict, pixels as JSON numbers to TF Serving :predict
PROTOCOLS = ("predict", "oip-binary", "oip-json", "tfs-json", "grpc", "tfs-grpc", "json-numbers")
GRPC = ("grpc", "tfs-grpc")  # the others are HTTP
TIMEOUT = 300.0  # seconds: 64 uploads of 10 MiB at once take a while
# one TCP connection per gRPC client, as each HTTP client has its own: gRPC shares a
# connection between channels to the same address unless told not to
GRPC_CHANNEL = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
]
JSON = {"content-type": "application/json"}

Request = tuple[str, dict[str, str], bytes]  # path (gRPC: the method's), headers, body


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


def request_for(protocol: str, files: list[bytes], pixels: np.ndarray | None = None) -> Request:
    """One request of ``files`` (for ``json-numbers``: of ``pixels``, [N, H, W, 3]) as
    ``protocol`` carries them (gRPC ``ModelInfer`` and OIP binary ask for the probabilities
    only, in binary, as tritonclient does)."""
    if protocol == "predict":
        path, field = ("/predict", "file") if len(files) == 1 else ("/predict/batch", "files")
        parts = [(field, (f"photo{i}.jpg", f, "image/jpeg")) for i, f in enumerate(files)]
        request = httpx.Request("POST", path, files=parts)
        return path, dict(request.headers), request.read()
    if protocol in ("tfs-json", "json-numbers"):
        if protocol == "json-numbers":
            instances = np.asarray(pixels).tolist()
        else:
            instances = [{"b64": base64.b64encode(f).decode()} for f in files]
        body = json.dumps({"instances": instances}, separators=(",", ":"))
        return f"/v1/models/{MODEL}:predict", JSON, body.encode()
    if protocol == "tfs-grpc":
        message = TFSERVING.messages["PredictRequest"]()
        message.model_spec.name = MODEL
        tensor = message.inputs["image_bytes"]
        tensor.dtype = DT_STRING  # as tf.make_tensor_proto builds it
        tensor.string_val.extend(files)
        tensor.tensor_shape.dim.add(size=len(files))
        path = TFSERVING.services[PREDICTION_SERVICE]["Predict"].path
        return path, {}, message.SerializeToString()
    tensor = {"name": "image_bytes", "shape": [len(files)], "datatype": "BYTES"}
    if protocol == "oip-json":
        tensor["data"] = [base64.b64encode(f).decode() for f in files]
        return f"/v2/models/{MODEL}/infer", JSON, json.dumps({"inputs": [tensor]}).encode()
    elements = b"".join(struct.pack("<I", len(f)) + f for f in files)  # BYTES: length, bytes
    if protocol == "grpc":
        message = INFERENCE.messages["ModelInferRequest"](model_name=MODEL)
        message.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(files)])
        message.outputs.add(name="probabilities")
        message.raw_input_contents.append(elements)
        path = INFERENCE.services["inference.GRPCInferenceService"]["ModelInfer"].path
        return path, {}, message.SerializeToString()
    tensor["parameters"] = {"binary_data_size": len(elements)}  # oip-binary
    output = {"name": "probabilities", "parameters": {"binary_data": True}}
    header = json.dumps({"inputs": [tensor], "outputs": [output]}).encode()
    headers = {"content-type": "application/octet-stream"}
    headers["inference-header-content-length"] = str(len(header))
    return f"/v2/models/{MODEL}/infer", headers, header + elements


def opener(protocol: str, requests: list[Request], url: str, address: str) -> Client:
    """Clients of ``protocol``, as :func:`bench.serve_load.run_load` drives them: each sends
    one of ``requests`` after another (drawn with its random generator), by httpx to
    ``url`` or on a ``grpc.aio`` channel to ``address`` (host:port), and answers the
    outcome: the HTTP status, 200 for a gRPC OK, else the gRPC code or what failed."""

    @contextlib.asynccontextmanager
    async def http() -> AsyncIterator[Send]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:

            async def send(rng: random.Random) -> tuple[str, int | str]:
                path, headers, body = rng.choice(requests)
                try:
                    response = await client.post(path, content=body, headers=headers)
                except httpx.TimeoutException:
                    return protocol, "timeout"
                except httpx.TransportError as exc:
                    return protocol, type(exc).__name__
                return protocol, response.status_code

            yield send

    @contextlib.asynccontextmanager
    async def rpc() -> AsyncIterator[Send]:
        async with grpc.aio.insecure_channel(address, options=GRPC_CHANNEL) as channel:
            call = channel.unary_unary(requests[0][0])  # bytes in, bytes out

            async def send(rng: random.Random) -> tuple[str, int | str]:
                try:
                    await call(rng.choice(requests)[2], timeout=TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    return protocol, exc.code().name
                return protocol, 200

            yield send

    return rpc if protocol in GRPC else http
