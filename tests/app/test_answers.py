"""Every protocol answers what ``/predict`` answers: one table over protocol x input form.

One real service (``protocols_server`` of tests/app/conftest.py, shared with the
modules named below: versions 1 and 2, REST and gRPC in one process) answers the same
three small JPEGs in every way a client can send them; each row turns them into
probabilities [N, 2] that must equal ``/predict``'s for the same files (<= 1e-6), from
version 2 (the latest). The rows:

* Open Inference Protocol over REST (tritonclient.http): encoded images as BYTES and
  pixels as FP32, each as binary tensor data or JSON;
* the Open Inference Protocol over gRPC (tritonclient.grpc): BYTES and FP32;
* TF Serving's REST API: ``:predict`` in rows and columns, images as ``{"b64": ...}``,
  named or not, or pixels, and ``:classify``;
* TF Serving's gRPC API (its own generated client): ``Predict`` with files, a scalar
  string, pixels in ``tensor_content`` and in ``float_val``, and ``Classify``.

Each protocol's other behaviour (metadata, versions, errors, overload) is tested in its
own module: test_v2, test_grpc, test_tfserving, test_tfserving_grpc.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from servicekit import Server
from tests.app.protocols import CLASSES, TOLERANCE, images, pixels, predicted

FILES = images(3)


class Clients:
    """The server and one client per protocol, opened once for the module."""

    def __init__(self, server: Server, stack: Any) -> None:
        grpc_address = f"127.0.0.1:{server.grpc_port}"  # type: ignore[attr-defined]
        self.server = server
        self.http = stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
        self.oip_http = stack.enter_context(
            triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        )
        self.oip_grpc = stack.enter_context(triton_grpc.InferenceServerClient(grpc_address))
        channel = stack.enter_context(grpc.insecure_channel(grpc_address))
        self.tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def clients(protocols_server: Server) -> Iterator[Clients]:
    with contextlib.ExitStack() as stack:
        yield Clients(protocols_server, stack)


@pytest.fixture(scope="module")
def expected(clients: Clients) -> np.ndarray:
    """/predict's probabilities for FILES."""
    return predicted(clients.server.url, FILES)


# ---------------------------------------------------------------- Open Inference Protocol


def _oip_http(kind: str, binary: bool) -> Callable[[Clients], np.ndarray]:
    def answer(c: Clients) -> np.ndarray:
        if kind == "BYTES":
            tensor = triton_http.InferInput("image_bytes", [len(FILES)], "BYTES")
            elements = FILES if binary else [base64.b64encode(f) for f in FILES]
            tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
        else:
            array = pixels(FILES)
            tensor = triton_http.InferInput("images", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=binary)
        output = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
        result = c.oip_http.infer("catdog", [tensor], outputs=[output])
        assert ("parameters" in result.get_output("probabilities")) == binary
        assert result.get_response()["model_version"] == "2"
        return result.as_numpy("probabilities")

    return answer


def _oip_grpc(kind: str) -> Callable[[Clients], np.ndarray]:
    def answer(c: Clients) -> np.ndarray:
        if kind == "BYTES":
            tensor = triton_grpc.InferInput("image_bytes", [len(FILES)], "BYTES")
            tensor.set_data_from_numpy(np.array(FILES, dtype=np.object_))
        else:
            array = pixels(FILES)
            tensor = triton_grpc.InferInput("images", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
        result = c.oip_grpc.infer("catdog", [tensor], request_id="r-7")
        response = result.get_response()
        assert (response.model_version, response.id) == ("2", "r-7")
        return result.as_numpy("probabilities")

    return answer


# ---------------------------------------------------------------- TF Serving REST


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _tfs_rest(body: Callable[[], dict[str, Any]], key: str) -> Callable[[Clients], np.ndarray]:
    def answer(c: Clients) -> np.ndarray:
        response = c.http.post("/v1/models/catdog:predict", json=body())
        assert response.status_code == 200, response.text
        assert list(response.json()) == [key]
        return np.array(response.json()[key])

    return answer


def _tfs_rest_classify(c: Clients) -> np.ndarray:
    features = {"caption": "pet", "score": 0.5, "count": 3, "weights": [0.5, 1.5]}
    body = {
        "context": {"w": 1.0},
        "examples": [{"image_bytes": _b64(f), **features} for f in FILES],
    }
    response = c.http.post("/v1/models/catdog:classify", json=body)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert all([label for label, _ in pairs] == list(CLASSES) for pairs in result)
    return np.array([[score for _, score in pairs] for pairs in result])


# ---------------------------------------------------------------- TF Serving gRPC


def _tfs_probabilities(response: Any) -> np.ndarray:
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("catdog", 2, "serving_default")
    return tf.make_ndarray(response.outputs["probabilities"])


def _tfs_grpc(name: str, value: Callable[[], Any]) -> Callable[[Clients], np.ndarray]:
    def answer(c: Clients) -> np.ndarray:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "catdog"
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value()))
        return _tfs_probabilities(c.tfs.Predict(request, timeout=60))

    return answer


def _tfs_grpc_float_val(c: Clients) -> np.ndarray:
    array = pixels(FILES)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "catdog"
    tensor = request.inputs["images"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=s) for s in array.shape])
    tensor.float_val.extend(array.ravel().tolist())
    return _tfs_probabilities(c.tfs.Predict(request, timeout=60))


def _tfs_grpc_scalar(c: Clients) -> np.ndarray:
    """One file per request as a scalar string, as TensorFlow makes it."""
    rows = []
    for data in FILES:
        request = predict_pb2.PredictRequest(model_spec={"name": "catdog"})
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(data))
        rows.append(_tfs_probabilities(c.tfs.Predict(request, timeout=60))[0])
    return np.array(rows)


def _tfs_grpc_classify(c: Clients) -> np.ndarray:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "catdog"
    for position, data in enumerate(FILES):
        feature = request.input.example_list.examples.add().features.feature
        feature["image_bytes" if position else "photo"].bytes_list.value.append(data)
        feature["weight"].float_list.value.append(1.0)  # not an image: ignored
    result = c.tfs.Classify(request, timeout=60).result.classifications
    assert all([k.label for k in row.classes] == list(CLASSES) for row in result)
    return np.array([[k.score for k in row.classes] for row in result])


ROWS: dict[str, Callable[[Clients], np.ndarray]] = {
    "oip-rest BYTES binary": _oip_http("BYTES", binary=True),
    "oip-rest BYTES json": _oip_http("BYTES", binary=False),
    "oip-rest FP32 binary": _oip_http("FP32", binary=True),
    "oip-rest FP32 json": _oip_http("FP32", binary=False),
    "oip-grpc BYTES": _oip_grpc("BYTES"),
    "oip-grpc FP32": _oip_grpc("FP32"),
    "tfs-rest rows of b64": _tfs_rest(
        lambda: {"instances": [_b64(f) for f in FILES]}, "predictions"
    ),
    "tfs-rest rows naming the input": _tfs_rest(
        lambda: {"instances": [{"image_bytes": _b64(f)} for f in FILES]}, "predictions"
    ),
    "tfs-rest rows of pixels": _tfs_rest(
        lambda: {"instances": pixels(FILES).tolist()}, "predictions"
    ),
    "tfs-rest columns of b64": _tfs_rest(lambda: {"inputs": [_b64(f) for f in FILES]}, "outputs"),
    "tfs-rest columns naming the input": _tfs_rest(
        lambda: {"inputs": {"image_bytes": [_b64(f) for f in FILES]}}, "outputs"
    ),
    "tfs-rest columns of pixels": _tfs_rest(
        lambda: {"inputs": {"images": pixels(FILES).tolist()}, "signature_name": "serving_default"},
        "outputs",
    ),
    "tfs-rest classify": _tfs_rest_classify,
    "tfs-grpc files": _tfs_grpc("image_bytes", lambda: FILES),
    "tfs-grpc a scalar string each": _tfs_grpc_scalar,
    "tfs-grpc pixels in tensor_content": _tfs_grpc("images", lambda: pixels(FILES)),
    "tfs-grpc pixels in float_val": _tfs_grpc_float_val,
    "tfs-grpc classify": _tfs_grpc_classify,
}


@pytest.mark.parametrize("row", list(ROWS))
def test_answers_equal_predict(clients: Clients, expected: np.ndarray, row: str) -> None:
    answer = np.asarray(ROWS[row](clients))
    assert answer.shape == (len(FILES), len(CLASSES)), answer.shape
    np.testing.assert_allclose(answer, expected, atol=TOLERANCE)
