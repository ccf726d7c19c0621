"""GET /v1/models/{name}, /metrics and /openapi.json."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from servicekit import value
from tests import images
from tests.app.helpers import good_image, metrics_text, serve, settings_for, upload


async def test_model_info(client: httpx.AsyncClient, tiny_model_base: Path) -> None:
    metadata = json.loads((tiny_model_base / "1" / "metadata.json").read_text())
    response = await client.get("/v1/models/catdog")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["name"] == "catdog"
    assert info["version"] == "1"
    assert info["input_size"] == [32, 32]
    assert info["class_names"] == ["cat", "dog"]
    assert info["scaling"] == "x/255"
    assert info["architecture"] == "article-1"
    assert info["parameters"] == metadata["parameters"] > 0
    assert info["metrics"] == metadata["metrics"]
    assert 0.0 <= info["metrics"]["validation"]["accuracy"] <= 1.0
    assert info["metadata"]["image_size"] == [32, 32]


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models/other")
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert "other" in detail and "catdog" in detail


async def test_metrics_after_requests(tiny_model_base: Path) -> None:
    async with serve(settings_for(tiny_model_base)) as (_, client):
        for seed in range(3):
            response = await client.post("/predict", files=upload(good_image(seed)))
            assert response.status_code == 200, response.text
        response = await client.post("/predict", files=upload(images.text_bytes()))
        assert response.status_code == 415, response.text
        response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text

    assert "catdog_requests_total" in text
    assert value(text, "catdog_requests_total", route="/predict", method="POST", status="200") == 3
    assert value(text, "catdog_requests_total", route="/predict", method="POST", status="415") == 1
    assert value(text, "catdog_request_duration_seconds_count", route="/predict") == 4
    assert "catdog_request_duration_seconds_bucket" in text
    # Only the three images that reached the model were queued and inferred.
    assert value(text, "catdog_queue_wait_seconds_count") == 3
    assert value(text, "catdog_inference_seconds_count") == 3
    assert value(text, "catdog_batch_size_sum") == 3
    assert value(text, "catdog_batch_size_bucket", le="+Inf") == value(
        text, "catdog_batch_size_count"
    )
    assert 1 <= value(text, "catdog_batch_size_count") <= 3
    assert value(text, "catdog_model_version", version="1") == 1.0
    assert value(text, "catdog_model_loads_total", result="loaded") == 1


async def test_metrics_count_unknown_routes_apart(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/page")
    assert response.status_code == 404
    text = await metrics_text(client)
    assert value(text, "catdog_requests_total", route="unmatched", status="404") >= 1
    assert value(text, "catdog_requests_total", route="/no/such/page") == 0


async def test_openapi(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    spec = response.json()
    paths = spec["paths"]
    assert {"/predict", "/predict/batch", "/v1/models/{name}"} <= set(paths)
    assert "post" in paths["/predict"] and "post" in paths["/predict/batch"]
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    for status in ("200", "413", "415", "422", "503"):
        assert status in paths["/predict"]["post"]["responses"]
    prediction = spec["components"]["schemas"]["Prediction"]
    assert set(prediction["properties"]) == {
        "label",
        "class_index",
        "probabilities",
        "model_version",
        "known",
        "ood_score",
    }
    assert set(prediction["required"]) == {"label", "class_index", "probabilities", "model_version"}
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
