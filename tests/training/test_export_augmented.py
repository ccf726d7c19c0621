"""Export of models with augmentation layers, and the flip-averaging (TTA) wrapper.

Keras augmentation layers default to training mode when a model is traced with
``training`` unset, so an exported SavedModel could keep randomly flipping,
rotating and zooming at serving time. These tests pin that the export runs
them in inference mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catdog.runtimes import load_saved_model
from training.export import export_model, with_flip_averaging
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
