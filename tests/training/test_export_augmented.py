"""Export of models with augmentation layers, the flip-averaging (TTA) wrapper, and a
transfer model exported with its backbone at another size.

Keras augmentation layers default to training mode when a model is traced with
``training`` unset, so an exported SavedModel could keep randomly flipping,
rotating and zooming at serving time. These tests pin that the export runs
them in inference mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from catdog.contract import LITERT_FILE
from catdog.runtimes import load_saved_model
from training.export import (
    export_model,
    export_run,
    load_checkpoint,
    load_outputs,
    with_flip_averaging,
)
from training.models import make_model


def _images(count: int = 6, size: int = 32) -> np.ndarray:
    return np.random.default_rng(7).random((count, size, size, 3), dtype=np.float32)


def test_exported_scratch_model_serves_without_augmentation(tmp_path: Path) -> None:
    model = make_model("scratch", (32, 32, 3), 2)
    folder = export_model(model, tmp_path / "catdog", version=1)
    predict, contract = load_saved_model(folder)
    images = _images()
    served = predict(images)
    assert contract.image_size == (32, 32)
    np.testing.assert_allclose(served, np.asarray(model(images, training=False)), atol=1e-5)
    np.testing.assert_array_equal(served, predict(images))  # no randomness left


def test_exported_transfer_model_serves_without_augmentation(tmp_path: Path) -> None:
    model = make_model("transfer", (32, 32, 3), 2, weights=None)
    predict, _ = load_saved_model(export_model(model, tmp_path / "catdog", version=1))
    images = _images()
    np.testing.assert_allclose(
        predict(images), np.asarray(model(images, training=False)), atol=1e-5
    )


def test_flip_averaging_is_the_mean_of_image_and_mirror(tmp_path: Path) -> None:
    model = make_model("article-1", (32, 32, 3), 2)
    wrapped = with_flip_averaging(model)
    images = _images()
    expected = (np.asarray(model(images)) + np.asarray(model(images[:, :, ::-1, :]))) / 2
    np.testing.assert_allclose(np.asarray(wrapped(images)), expected, atol=1e-6)
    predict, _ = load_saved_model(export_model(wrapped, tmp_path / "catdog", version=1))
    np.testing.assert_allclose(predict(images), expected, atol=1e-5)


def test_a_transfer_run_exports_with_its_backbone_at_another_size(tmp_path: Path) -> None:
    """The same weights, the backbone run at 48 inside the graph: the input (the contract)
    stays 32x32, the answers are the rebuilt model's and not the trained size's."""
    run = tmp_path / "run"
    run.mkdir()
    trained = make_model("transfer", (32, 32, 3), 2, weights=None, augmentation=False)
    rng = np.random.default_rng(0)  # untrained, its features are 0: give it random weights
    for weight in trained.weights:
        positive = any(k in weight.path for k in ("variance", "gamma"))
        shape = tuple(weight.shape)
        weight.assign(rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.2, shape))
    trained.save(run / "best.keras")
    config = {"architecture": "transfer", "backbone": "mobilenet", "augment": "robust"}
    (run / "config.json").write_text(json.dumps(config))
    images = _images()

    folder = export_run(run, tmp_path / "catdog", version=1, backbone_size=48)

    predict, contract = load_saved_model(folder)
    assert contract.image_size == (32, 32)
    assert contract.extra["backbone_size"] == 48
    resized = load_checkpoint(run / "best.keras", backbone_size=48)
    expected = np.asarray(resized(images, training=False))
    np.testing.assert_allclose(predict(images), expected, atol=1e-5)
    assert np.abs(expected - np.asarray(trained(images, training=False))).max() > 1e-4
    assert (folder / LITERT_FILE).is_file()  # converted and checked against the SavedModel
    outputs, _ = load_outputs(run / "best.keras", backbone_size=48, tta=True)
    mirrored = np.asarray(resized(images[:, :, ::-1], training=False))
    np.testing.assert_allclose(
        outputs(images)["probabilities"], (expected + mirrored) / 2, atol=1e-6
    )
