"""The shipped model (models/catdog) served by the app classifies real photos.

The photos are a seeded random sample of the Kaggle test split (see
tests/fixtures/photos/README.md); the model's test-split metrics are read from
the metadata it ships with.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.core.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
MODEL_BASE = ROOT / "models" / "catdog"
PHOTOS = sorted((ROOT / "tests" / "fixtures" / "photos").glob("*.jpg"))
# Photos the served version gets wrong (kept in the sample, not replaced; see the
# fixtures README). Version 3 called dog.9126 and dog.8332 cats; versions 4 and 5 get all 20.
KNOWN_MISTAKES: set[str] = set()
SERVED = max((p for p in MODEL_BASE.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def true_label(photo: Path) -> str:
    """``cat.123.jpg`` -> ``cat``."""
    return photo.name.split(".")[0]


@pytest.mark.parametrize("version", ["1", "2", "3", "4"])
def test_shipped_models_are_present_and_meet_their_accuracy_bar(version: str) -> None:
    metadata = json.loads((MODEL_BASE / version / "metadata.json").read_text())
    test = metadata["metrics"]["test"]
    assert test["count"] == 2500
    assert test["accuracy"] >= 0.97
    assert all(stats["accuracy"] >= 0.96 for stats in test["per_class"].values())
    assert metadata["class_names"] == ["cat", "dog"]
    size = sum(p.stat().st_size for p in (MODEL_BASE / version).rglob("*") if p.is_file())
    assert size <= 10 * 1024 * 1024
    assert metadata["runtimes"]["litert"]["max_abs_diff"] <= 1e-5


def test_int8_version_met_its_contract() -> None:
    """Version 5 computes in int8 on LiteRT: its file was checked against the float
    SavedModel on the test split, the robustness suite and the "neither" sets."""
    folder = MODEL_BASE / "5"
    metadata = json.loads((folder / "metadata.json").read_text())
    contract = metadata["runtimes"]["litert"]["contract"]
    limits = contract["limits"]
    assert contract["test"]["photos"] == 2500
    assert contract["test"]["agreement"] >= limits["agreement"] >= 0.995
    assert max(contract["test"]["accuracy_drop"].values()) <= limits["accuracy_drop"] <= 0.003
    assert len(contract["robustness"]) == 10
    assert all(r["accuracy"] >= 0.96 for r in contract["robustness"].values())
    assert all(v >= 0.99 for v in contract["threshold"]["validation_pass_rate"].values())
    assert all(v >= 0.95 for v in contract["threshold"]["neither_flagged"].values())
    assert metadata["ood"]["threshold"] == contract["threshold"]["threshold"]
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 10 * 1024 * 1024


@pytest.fixture
async def client() -> httpx.AsyncClient:
    app = create_app(Settings(model_dir=MODEL_BASE))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_service_with_shipped_model_classifies_real_photos(
    client: httpx.AsyncClient,
) -> None:
    assert len(PHOTOS) == 20
    correct = 0
    for photo in PHOTOS:
        response = await client.post("/predict", files={"file": (photo.name, photo.read_bytes())})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == SERVED.name == "5"
        assert body["known"] is True, (photo.name, body)  # real cat and dog photos pass
        if photo.name in KNOWN_MISTAKES:
            continue
        assert body["label"] == true_label(photo), (photo.name, body)
        assert body["probabilities"][true_label(photo)] > 0.5
        correct += 1
    assert correct == len(PHOTOS) - len(KNOWN_MISTAKES)


async def test_batch_endpoint_agrees_with_single_predictions(client: httpx.AsyncClient) -> None:
    files = [("files", (p.name, p.read_bytes())) for p in PHOTOS[:8]]
    response = await client.post("/predict/batch", files=files)
    assert response.status_code == 200
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == [true_label(p) for p in PHOTOS[:8]]


async def test_version_4_stays_servable_by_policy() -> None:
    """``CATDOG_VERSION_POLICY=specific:4`` serves the float32 version beside version 5."""
    app = create_app(Settings(model_dir=MODEL_BASE, version_policy="specific:4"))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            photo = PHOTOS[0]
            response = await c.post("/predict", files={"file": (photo.name, photo.read_bytes())})
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "4"
    assert response.json()["label"] == true_label(photo)
