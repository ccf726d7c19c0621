"""Open Inference Protocol v2, driven by tritonclient against a real uvicorn process.

Health, metadata, answers in JSON or binary, the classification extension, explicit
versions (that each input form answers what ``/predict`` answers: test_answers.py).
Overload and bad input are checked in-process, where the admission can be filled.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi import HTTPException
from tritonclient.utils import InferenceServerException

from app.protocols.oip import codec as oip
from app.protocols.oip import schemas as oip_schemas
from servicekit import Server
from tests import images as test_images
from tests.app.helpers import error_json, good_image, serve, settings_for
from tests.app.protocols import (
    CLASSES,
    TOLERANCE,
    images,
    predicted,
)


@pytest.fixture(scope="module")
def server(protocols_server: Server) -> Server:
    """The service the protocol modules share (tests/app/conftest.py)."""
    return protocols_server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(urlparse(server.url).netloc, network_timeout=120) as c:
        yield c


def bytes_input(files: list[bytes], binary: bool) -> triton.InferInput:
    """Encoded images: raw bytes as binary tensor data, base64 strings in JSON."""
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    elements = files if binary else [base64.b64encode(f) for f in files]
    return tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)


def fp32_input(array: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("images", list(array.shape), "FP32")
    return tensor.set_data_from_numpy(array, binary_data=binary)


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "catdog"
    assert set(metadata["extensions"]) >= {"binary_tensor_data", "classification"}


def test_model_readiness_by_name_and_version(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("catdog")
    assert client.is_model_ready("catdog", "1")
    assert client.is_model_ready("catdog", "2")
    assert not client.is_model_ready("catdog", "3")
    assert not client.is_model_ready("dog")


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("catdog")
    assert metadata["name"] == "catdog"
    assert metadata["versions"] == ["2", "1"]
    assert metadata["platform"] == "tensorflow"
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
    assert inputs == {"image_bytes": ("BYTES", [-1]), "images": ("FP32", [-1, 32, 32, 3])}
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.get_model_metadata("catdog", "1")["name"] == "catdog"
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("catdog", "7")
    assert error.value.status() == "404" and "no version '7'" in error.value.message()


def test_outputs_not_named_come_back_binary(client: triton.InferenceServerClient) -> None:
    """tritonclient asks ``binary_data_output`` when no output is named."""
    result = client.infer("catdog", [bytes_input(images(1), binary=True)])
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 8
    assert result.as_numpy("probabilities").shape == (1, 2)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(
    client: triton.InferenceServerClient, server: Server, binary: bool
) -> None:
    files = images(2)
    requested = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
    result = client.infer("catdog", [bytes_input(files, binary)], outputs=[requested])
    rows = result.as_numpy("probabilities")
    assert rows.shape == (2, 2)
    expected = predicted(server.url, files)
    for row, probabilities in zip(rows, expected):
        # tritonclient gives bytes from binary data, str from JSON
        parsed = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
        scores = [float(score) for score, _, _ in parsed]
        assert scores == sorted(scores, reverse=True)  # highest first
        for score, index, label in parsed:
            assert CLASSES[int(index)] == label
            assert abs(float(score) - probabilities[int(index)]) <= TOLERANCE
    top = triton.InferRequestedOutput("probabilities", binary_data=False, class_count=1)
    result = client.infer("catdog", [bytes_input(files[:1], binary)], outputs=[top])
    assert result.as_numpy("probabilities").shape == (1, 1)


def test_explicit_version(client: triton.InferenceServerClient) -> None:
    files = images(2)
    answers = {}
    for version in ("1", "2"):
        result = client.infer("catdog", [bytes_input(files, True)], model_version=version)
        assert result.get_response()["model_version"] == version
        answers[version] = result.as_numpy("probabilities")
    assert np.abs(answers["1"] - answers["2"]).max() > 1e-3  # two different models answered
    default = client.infer("catdog", [bytes_input(files, True)]).as_numpy("probabilities")
    np.testing.assert_array_equal(default, answers["2"])
    with pytest.raises(InferenceServerException) as error:
        client.infer("catdog", [bytes_input(files, True)], model_version="3")
    assert error.value.status() == "404"


@pytest.mark.parametrize(
    ("tensor", "status", "words"),
    [
        (lambda: bytes_input([test_images.text_bytes()], True), "415", "not a recognised"),
        (lambda: fp32_input(np.full((1, 32, 32, 3), 2.0, np.float32), True), "400", "[0, 1]"),
        (lambda: fp32_input(np.zeros((1, 16, 16, 3), np.float32), False), "400", "32, 32, 3"),
        (lambda: fp32_input(np.zeros((40, 32, 32, 3), np.float32), True), "413", "at most 32"),
    ],
    ids=["not-an-image", "out-of-range", "wrong-shape", "too-many"],
)
def test_bad_input(
    client: triton.InferenceServerClient,
    tensor: object,
    status: str,
    words: str,
) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.infer("catdog", [tensor()])  # type: ignore[operator]
    assert error.value.status() == status, error.value
    assert words in error.value.message()


def test_malformed_requests_are_400_in_the_protocols_shape(server: Server) -> None:
    jpeg = base64.b64encode(good_image()).decode()
    one = {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [jpeg]}
    cases = {
        "not json": b"{nope",
        "no inputs": b'{"inputs": []}',
        "unknown input": b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}',
        "not base64": httpx.Request("POST", "/", json={"inputs": [{**one, "data": ["*"]}]}).read(),
        "wrong datatype": httpx.Request(
            "POST", "/", json={"inputs": [{**one, "datatype": "FP32"}]}
        ).read(),
        "unknown output": httpx.Request(
            "POST", "/", json={"inputs": [one], "outputs": [{"name": "logits"}]}
        ).read(),
    }
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for case, body in cases.items():
            response = http.post("/v2/models/catdog/infer", content=body)
            assert response.status_code == 400, (case, response.text)
            assert set(error_json(response)) == {"error"}, case
        response = http.post(
            "/v2/models/catdog/infer",
            content=b'{"inputs": []}',
            headers={"Inference-Header-Content-Length": "999"},
        )
        assert response.status_code == 400 and "Inference-Header" in response.json()["error"]
        # A digit that str.isdigit() accepts but int() cannot read (was a 500).
        response = http.post(
            "/v2/models/catdog/infer",
            content=b'{"inputs": []}',
            headers=[(b"Inference-Header-Content-Length", b"\xb2")],
        )
        assert response.status_code == 400 and "Inference-Header" in response.json()["error"]
        for too_long in (b"9" * 5000, b"9" * 19):  # int() refuses > 4,300 digits (was a 500)
            response = http.post(
                "/v2/models/catdog/infer",
                content=b'{"inputs": []}',
                headers=[(b"Inference-Header-Content-Length", too_long)],
            )
            assert response.status_code == 400, response.text
        response = http.get("/v2/models/catdog/versions/" + "9" * 5000)
        assert response.status_code == 404 and set(error_json(response)) == {"error"}
        response = http.post("/v2/models/dog/infer", json={"inputs": [one]})
        assert response.status_code == 404, response.text
        expected = "no model named 'dog'; this service serves 'catdog'"
        assert error_json(response) == {"error": expected}


async def test_overload_is_503_with_retry_after(tiny_model_base: Path) -> None:
    """Refused at the gate (no room for one image) and at admission (no room for two)."""
    settings = settings_for(
        tiny_model_base, max_images_in_flight=3, max_files_per_request=3, retry_after_s=7
    )
    jpeg = base64.b64encode(good_image()).decode()
    body = {"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES"}]}
    body["inputs"][0]["data"] = [jpeg, jpeg]
    async with serve(settings) as (app, client):
        for taken in (3, 2):
            with app.state.service.admission.admit(taken):
                response = await client.post("/v2/models/catdog/infer", json=body)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "7"
            assert set(error_json(response)) == {"error"}
            assert "busy" in response.json()["error"]
        response = await client.post("/v2/models/catdog/infer", json=body)
        assert response.status_code == 200, response.text


async def test_not_ready_is_503(tiny_model_base: Path) -> None:
    async with serve(settings_for(tiny_model_base)) as (app, client):
        app.state.service.accepting = False  # as while stopping
        assert (await client.get("/v2/health/live")).status_code == 200
        response = await client.get("/v2/health/ready")
        assert response.status_code == 503 and response.json() == {"ready": False}
        response = await client.get("/v2/models/catdog/ready")
        assert response.status_code == 503 and "not accepting" in response.json()["error"]
        app.state.service.accepting = True


def test_openapi_documents_the_protocol(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=60).json()
    paths = spec["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
    ):
        assert "get" in paths[path], path
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        infer = paths[path]["post"]
        assert "Inference-Header-Content-Length" in infer["description"]
        schema = infer["requestBody"]["content"]["application/json"]["schema"]
        assert "inputs" in schema["properties"] and "$ref" not in str(schema)
        assert {"200", "400", "404", "413", "415", "503"} <= set(infer["responses"])


def test_binary_image_files_are_read_where_they_lie_in_the_body(tmp_path: Path) -> None:
    """Files in binary tensor data are decoded from the request body itself: copying a
    large batch out of it would hold the batch twice."""
    files = [good_image(), test_images.png_rgba_bytes(alpha=255)]
    body = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    tensor = oip_schemas.RequestInput(name="image_bytes", datatype="BYTES", shape=[2])
    given = oip.decode_input(tensor, memoryview(body), settings_for(tmp_path))
    assert isinstance(given, list)
    assert [bytes(f) for f in given] == files
    assert all(isinstance(f, memoryview) and f.obj is body for f in given)


def test_a_shape_without_pixels_is_a_bad_request(tmp_path: Path) -> None:
    """Zero pixels in all, with sizes numpy cannot make an array of: 400, not a fault."""
    tensor = oip_schemas.RequestInput(name="images", datatype="FP32", shape=[1, 0, 2**62, 2**62])
    for raw in (None, memoryview(b"")):
        with pytest.raises(HTTPException) as error:
            oip.decode_input(tensor, raw, settings_for(tmp_path))
        assert error.value.status_code == 400 and "holds no pixels" in error.value.detail
