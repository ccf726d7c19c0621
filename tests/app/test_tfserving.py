"""TF Serving's REST API with plain httpx against a real uvicorn process.

``GET /v1/models/{name}`` is both TF Serving's status and this service's model info;
versions answer by URL, unknown ones 404 in TF Serving's shape (that every form of
``:predict`` and ``:classify`` answers what ``/predict`` answers: test_answers.py).
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from servicekit import Server, value
from tests import images as test_images
from tests.app.protocols import (
    TOLERANCE,
    images,
)


@pytest.fixture(scope="module")
def server(protocols_server: Server) -> Server:
    """The service the protocol modules share (tests/app/conftest.py)."""
    return protocols_server


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_status_is_model_info_plus_model_version_status(http: httpx.Client) -> None:
    response = http.get("/v1/models/catdog")
    assert response.status_code == 200, response.text
    info = response.json()
    assert (info["name"], info["version"], info["class_names"]) == ("catdog", "2", ["cat", "dog"])
    assert [s["version"] for s in info["model_version_status"]] == ["2", "1"]
    for status in info["model_version_status"]:
        assert status["state"] == "AVAILABLE"
        assert status["status"] == {"error_code": "OK", "error_message": ""}
    loaded = {v["version"]: v for v in info["loaded_versions"]}
    assert set(loaded) == {"1", "2"}
    assert (loaded["1"]["runtime"], loaded["2"]["runtime"]) == ("litert", "tensorflow")
    assert all(v["memory_bytes"] > 0 for v in loaded.values())
    assert info["memory_bytes"] == loaded["2"]["memory_bytes"]

    one = http.get("/v1/models/catdog/versions/1").json()
    assert one["version"] == "1" and one["architecture"] == "article-1"
    assert [s["version"] for s in one["model_version_status"]] == ["1"]


def test_memory_per_version_in_metrics(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    for version in ("1", "2"):
        assert value(text, "catdog_model_memory_bytes", version=version) > 0
    assert value(text, "catdog_model_version", version="2") == 1


def test_unknown_model_or_version_is_404_with_error(http: httpx.Client) -> None:
    for path in (
        "/v1/models/catdog/versions/3",
        "/v1/models/catdog/versions/3/metadata",
        "/v1/models/dog/metadata",
    ):
        response = http.get(path)
        assert response.status_code == 404, (path, response.text)
        body = response.json()
        assert body["error"] and body["error"] == body["detail"], body
    response = http.post("/v1/models/catdog/versions/3:predict", json={"instances": []})
    assert response.status_code == 404
    assert "no version '3'; loaded versions: 2, 1" in response.json()["error"]


def test_metadata(http: httpx.Client) -> None:
    metadata = http.get("/v1/models/catdog/metadata").json()
    assert metadata["model_spec"] == {"name": "catdog", "signature_name": "", "version": "2"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    shapes = {
        name: (info["dtype"], [int(d["size"]) for d in info["tensor_shape"]["dim"]])
        for name, info in {**signature["inputs"], **signature["outputs"]}.items()
    }
    assert shapes == {
        "image_bytes": ("DT_STRING", [-1]),
        "images": ("DT_FLOAT", [-1, 32, 32, 3]),
        "probabilities": ("DT_FLOAT", [-1, 2]),
    }
    assert http.get("/v1/models/catdog/versions/1/metadata").json()["model_spec"]["version"] == "1"


def test_explicit_version_equals_the_other_protocol(http: httpx.Client) -> None:
    files = images(2)
    rows = {"instances": [b64(f) for f in files]}
    version_1 = http.post("/v1/models/catdog/versions/1:predict", json=rows).json()["predictions"]
    latest = http.post("/v1/models/catdog:predict", json=rows).json()["predictions"]
    assert np.abs(np.array(version_1) - np.array(latest)).max() > 1e-3
    tensor = {"name": "image_bytes", "shape": [2], "datatype": "BYTES"}
    tensor["data"] = [b64(f)["b64"] for f in files]
    oip = http.post("/v2/models/catdog/versions/1/infer", json={"inputs": [tensor]}).json()
    np.testing.assert_allclose(
        np.reshape(oip["outputs"][0]["data"], (2, 2)), version_1, atol=TOLERANCE
    )
    classified = http.post(
        "/v1/models/catdog/versions/1:classify",
        json={"examples": [{"image": b64(f)} for f in files]},
    ).json()["result"]
    np.testing.assert_allclose([[s for _, s in r] for r in classified], version_1, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"instances": [{"b64": "!!"}]}, 400, "base64"),
        ({"instances": [b64(test_images.text_bytes())]}, 415, "not a recognised"),
        ({"instances": [], "inputs": []}, 400, "either"),
        ({"instances": [b64(b"x"), [[[0.5, 0.5, 0.5]]]]}, 400, "all be"),
        ({"instances": [{"pixels": [1.0]}]}, 400, "image_bytes"),
        ({"inputs": {"images": [[[[2.0] * 3] * 32] * 32]}}, 400, "[0, 1]"),
        ({"inputs": {"images": [[1.0, 2.0], [3.0]]}}, 400, "rectangular"),
        ({"inputs": {"images": [[["0.5"] * 3] * 32] * 32}}, 400, "numbers"),
        ({"inputs": {"images": [[[True] * 3] * 32] * 32}}, 400, "numbers"),
        ({"instances": [[[[0.5, None, 0.5]] * 32] * 32]}, 400, "numbers"),
        ({"instances": [[[[0.5, True, 0.5]] * 32] * 32]}, 400, "['bool']"),
        ({"instances": [b64(b"\xff\xd8")] * 33}, 413, "at most 32"),
        ({"signature_name": "other", "instances": [b64(b"x")]}, 400, "signature"),
        ({"instances": "not a list"}, 400, "invalid request"),
        ({"instances": [{"image_bytes": [[[0.5] * 3] * 32] * 32}]}, 400, "takes images"),
        ({"inputs": {"image_bytes": [[[[0.5] * 3] * 32] * 32]}}, 400, "takes images"),
        ({"instances": [{"images": b64(b"x")}]}, 400, "takes pixels"),
        ({"inputs": {"images": [b64(b"x")]}}, 400, "takes pixels"),
    ],
    ids=[
        "bad-base64",
        "not-an-image",
        "both-forms",
        "mixed-rows",
        "unknown-input",
        "out-of-range",
        "ragged",
        "strings",
        "booleans",
        "null",
        "a-boolean-among-numbers",
        "too-many",
        "signature",
        "malformed",
        "pixels-as-image-bytes-rows",
        "pixels-as-image-bytes-columns",
        "images-as-pixels-rows",
        "images-as-pixels-columns",
    ],
)
def test_bad_predict_requests(http: httpx.Client, body: object, status: int, words: str) -> None:
    response = http.post("/v1/models/catdog:predict", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()


@pytest.mark.parametrize("verb", [":predict", ":classify"])
def test_an_unknown_version_is_404_before_the_body_arrives(server: Server, verb: str) -> None:
    """The version is looked up first: a client is not made to send a body to no model."""
    url = urlsplit(server.url)
    head = (
        f"POST /v1/models/catdog/versions/9{verb} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"instances": [')  # and the rest never comes
        answer = _read_answer(sock)  # a server waiting for the body times this out
    assert answer.startswith(b"HTTP/1.1 404"), answer
    assert b"version" in answer.partition(b"\r\n\r\n")[2]


def _read_answer(sock: socket.socket) -> bytes:
    """Head and body of one answer (the body may come in a later segment)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"\r\n\r\n"  # closed: nothing more is coming
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_more_values_than_any_legal_tensor_are_refused_before_parsing(
    http: httpx.Client,
) -> None:
    """32 images of 32x32x3 pixels are 98,304 values; the commas of a body past them
    (plus room for keys) answer 413 without building a Python float per value."""
    values = ",".join(["0.5"] * 110_000)
    body = f'{{"instances": [[{values}]]}}'.encode()
    response = http.post("/v1/models/catdog:predict", content=body)
    assert response.status_code == 413, response.text
    assert "more than 102400 values" in response.json()["error"]
    oip = {"inputs": [{"name": "images", "shape": [1, 110_000], "datatype": "FP32"}]}
    oip_body = (str(oip)[:-2].replace("'", '"') + f', "data": [{values}]}}]}}').encode()
    response = http.post("/v2/models/catdog/infer", content=oip_body)
    assert response.status_code == 413, response.text


def test_curl_form_content_type_is_read_as_json(http: httpx.Client) -> None:
    """``curl -d`` sends application/x-www-form-urlencoded; TF Serving reads JSON anyway."""
    body = httpx.Request("POST", "/", json={"instances": [b64(images(1)[0])]}).read()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    response = http.post("/v1/models/catdog:predict", content=body, headers=headers)
    assert response.status_code == 200, response.text


def test_classify_needs_one_image_per_example(http: httpx.Client) -> None:
    response = http.post("/v1/models/catdog:classify", json={"examples": [{"caption": "x"}]})
    assert response.status_code == 400 and "one image" in response.json()["error"]


def test_openapi_documents_tf_serving(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert "get" in paths["/v1/models/{name}/versions/{version}"]
    assert "get" in paths["/v1/models/{name}/metadata"]
    for verb in (":predict", ":classify"):
        for path in (
            f"/v1/models/{{name}}{verb}",
            f"/v1/models/{{name}}/versions/{{version}}{verb}",
        ):
            assert "requestBody" in paths[path]["post"], path
