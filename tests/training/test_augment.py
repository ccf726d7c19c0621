"""Robust-photo augmentation: shapes and ranges kept, images changed, wired into training.

* ``RobustAugment`` keeps a batch's shape, dtype and [0, 1] range, for full and
  odd-sized batches, and changes the pictures.
* With every random effect turned off, framing is the image or its mirror.
* ``make_dataset(augment=...)`` maps training batches; a ``transfer`` run with
  ``augment="robust"`` builds a model without in-model augmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.images import MakeSplit
from training.augment import RobustAugment
from training.data import make_dataset
from training.train import TrainConfig, train

pytestmark = [  # noise from inside Keras 3.15 itself, not from the project
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


def _batch(count: int = 8, size: int = 48) -> tf.Tensor:
    return tf.constant(np.random.default_rng(0).random((count, size, size, 3), np.float32))


@pytest.mark.parametrize("count", [1, 5, 16])
def test_shape_dtype_and_range_are_kept(count: int) -> None:
    images = _batch(count)
    out = RobustAugment()(images)
    assert out.shape == images.shape and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    assert float(tf.reduce_mean(tf.abs(out - images))) > 0.01


def test_with_everything_off_framing_is_the_image_or_its_mirror() -> None:
    off = RobustAugment(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), letterbox=0.0, rotate=0.0)
    images = _batch(6).numpy()
    out = off.framing(tf.constant(images)).numpy()
    for got, image in zip(out, images):
        same = np.abs(got - image).max() < 1e-4
        mirror = np.abs(got - image[:, ::-1]).max() < 1e-4
        assert same or mirror


def test_augment_runs_on_training_batches(make_split: MakeSplit) -> None:
    split = make_split(per_split=2)
    ds = make_dataset(split / "train", (16, 16), 4, cache=False, augment=lambda x: x * 0.0)
    images, _ = next(iter(ds))
    assert float(tf.reduce_max(images)) == 0.0


def test_robust_transfer_run_has_no_in_model_augmentation(
    make_split: MakeSplit, tmp_path: Path
) -> None:
    split = make_split(per_split=4, size=(40, 40))
    config = TrainConfig(
        data_dir=str(split),
        run_dir=str(tmp_path / "run"),
        architecture="transfer",
        weights=None,
        image_size=(32, 32),
        epochs=1,
        batch_size=4,
        augment="robust",
        steps_per_epoch=2,
    )
    train(config)
    import keras

    model = keras.saving.load_model(tmp_path / "run" / "best.keras")
    assert "augmentation" not in [layer.name for layer in model.layers]
    assert "features" in [layer.name for layer in model.layers]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augment"] == "robust"


def test_unknown_augmentation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="augmentation"):
        train(TrainConfig(data_dir=str(tmp_path), run_dir=str(tmp_path / "r"), augment="wild"))
