"""The int8 path on a tiny model: quantise, check the contract, serve the version.

A tiny conv net with a ``features`` layer, a ``classifier`` and a "neither" score
is exported as version 1; ``build_version`` makes version 2 computing in int8.
Untrained, it cannot meet the shipped contract, which must refuse it and leave
the model folder as it was; with limits it can meet, the version is written,
records its figures, and the service loads it with LiteRT and answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from tests.images import pet_jpeg_bytes
from tests.tiny_models import SIZE, images

LOOSE = {"agreement": 0, "accuracy_drop": 1, "robustness": 0, "pass_rate": 0, "neither": 0}


def _tiny_serving_model():  # -> keras.Model
    import keras

    from training.export import serving_model
    from training.ood import Gaussians, make_score_layer

    keras.utils.set_random_seed(1)
    inputs = keras.Input((*SIZE, 3), name="images")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    probabilities = keras.layers.Dense(2, activation="softmax", name="classifier")(features)
    model = keras.Model(inputs, probabilities, name="tiny")
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(8, 4)))[0].astype(np.float32)
    fit = Gaussians(rng.random((2, 8), dtype=np.float32), basis, np.ones(4, np.float32), 1.0)
    return serving_model(model, score=make_score_layer(fit))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """Models base folder with version 1 (float, with an OOD score) and its Keras model."""
    from training.export import export_model

    base = tmp_path_factory.mktemp("models") / "catdog"
    model = _tiny_serving_model()
    ood = {"method": "mahalanobis", "output": "ood_score", "threshold": 1.0}
    export_model(model, base, {"ood": ood}, version=1)
    return base, model


def test_quantize_computes_in_int8_and_keeps_the_score_float(tiny) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from catdog.litert import LiteRTModel
    from training.int8 import quantize

    _, model = tiny
    content = quantize(model, images(16, seed=1))
    interpreter = Interpreter(model_content=content)
    kinds = {d["name"]: d["dtype"] for d in interpreter.get_tensor_details()}
    assert any(t == np.int8 and "conv" in n for n, t in kinds.items())  # int8 activations
    score_tensors = [t for n, t in kinds.items() if "ood_score" in n]
    assert score_tensors and all(t != np.int8 for t in score_tensors)
    probe = images(8, seed=2)
    got = LiteRTModel(content).infer(probe)
    want = {k: np.asarray(v) for k, v in model(probe, training=False).items()}
    assert got["probabilities"].dtype == np.float32
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1, atol=1e-3)
    assert np.max(np.abs(got["probabilities"] - want["probabilities"])) < 0.05
    relative = np.abs(got["ood_score"] - want["ood_score"]) / np.abs(want["ood_score"])
    assert np.max(relative) < 0.05  # a float score on int8 features


def test_contract_refuses_an_int8_file_that_breaks_it(tiny, make_split) -> None:
    from training.int8_check import Limits, build_version

    base, model = tiny
    data = make_split(per_split=4)
    with pytest.raises(ValueError, match="breaks its contract: .*robustness 'original'"):
        build_version(base / "1", data, base, calibration=4, limits=Limits(), network=model)
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # nothing half-written


async def test_int8_version_is_written_with_its_figures_and_served(tiny, make_split) -> None:
    from app.core.config import Settings
    from app.main import create_app
    from training.int8_check import Limits, build_version

    base, model = tiny
    data = make_split(per_split=4)
    neither = {"flat": [pet_jpeg_bytes("cat", (40, 40), 5)]}
    final, figures = build_version(
        base / "1", data, base, calibration=4, categories=neither, limits=Limits(**LOOSE),
        network=model,
    )  # fmt: skip
    assert final == base / "2"
    metadata = json.loads((final / "metadata.json").read_text())
    contract = metadata["runtimes"]["litert"]["contract"]
    assert contract["test"]["photos"] == 8 and 0 <= contract["test"]["agreement"] <= 1
    assert set(contract["robustness"]) >= {"original", "letterbox 480x320", "jpeg q30"}
    assert metadata["ood"]["threshold"] == figures["threshold"]["threshold"]
    assert metadata["ood"]["previous_threshold"] == 1.0
    assert metadata["version"] == 2 and metadata["derived_from"]["version"] == 1

    app = create_app(Settings(model_dir=base))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            photo = pet_jpeg_bytes("dog", (48, 40), 9)
            response = await client.post("/predict", files={"file": ("dog.jpg", photo)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "2"
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-2
    assert body["ood_score"] is not None
