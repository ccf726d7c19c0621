"""``training.models``: the tutorial's layer shapes exactly, and the two stronger models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from training.models import make_model
from training.train import start_from, unfreeze

# (layer class, output shape without the batch axis) at 224x224x3, as in the tutorial.
TUTORIAL_SHAPES = {
    "article-1": [
        ("Conv2D", (222, 222, 16)),
        ("MaxPooling2D", (111, 111, 16)),
        ("Flatten", (197136,)),
        ("Dense", (128,)),
        ("Dense", (2,)),
    ],
    "article-2": [
        ("Conv2D", (222, 222, 32)),
        ("MaxPooling2D", (111, 111, 32)),
        ("Flatten", (394272,)),
        ("Dense", (128,)),
        ("Dense", (2,)),
    ],
    "article-3": [
        ("Conv2D", (222, 222, 32)),
        ("MaxPooling2D", (111, 111, 32)),
        ("Conv2D", (109, 109, 32)),
        ("MaxPooling2D", (55, 55, 32)),
        ("Flatten", (96800,)),
        ("Dense", (128,)),
        ("Dense", (2,)),
    ],
}


@pytest.fixture(autouse=True)
def _free_models() -> Iterator[None]:
    """The article models at 224x224 hold up to 50M weights; drop them after each test."""
    yield
    keras.backend.clear_session()


def expected_parameters(shapes: list[tuple[str, tuple[int, ...]]]) -> int:
    """Parameter count implied by the layer shapes (3x3 convolutions, biases everywhere)."""
    total, channels, features = 0, 3, 0
    for kind, shape in shapes:
        if kind == "Conv2D":
            total += 3 * 3 * channels * shape[-1] + shape[-1]
            channels = shape[-1]
        elif kind == "Flatten":
            features = shape[0]
        elif kind == "Dense":
            total += features * shape[0] + shape[0]
            features = shape[0]
    return total


@pytest.mark.parametrize("architecture", sorted(TUTORIAL_SHAPES))
def test_article_models_have_the_tutorial_shapes(architecture: str) -> None:
    model = make_model(architecture, (224, 224, 3), 2)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]

    got = [(type(layer).__name__, tuple(layer.output.shape[1:])) for layer in layers]

    assert got == TUTORIAL_SHAPES[architecture]
    assert model.input_shape == (None, 224, 224, 3)
    assert model.count_params() == expected_parameters(TUTORIAL_SHAPES[architecture])
    assert layers[-1].activation.__name__ == "softmax"


def test_article_model_outputs_probabilities_at_small_size() -> None:
    model = make_model("article-3", (32, 32, 3), 2)
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_scratch_model_builds_and_predicts() -> None:
    model = make_model("scratch", (32, 32, 3), 2)
    assert model.output_shape == (None, 2)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    probs = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Augmentation is part of the model, but only active in training: inference repeats
    # exactly, a training call sees randomly changed images.
    np.testing.assert_allclose(np.asarray(model(x, training=False)), probs, atol=1e-6)
    trained = [np.asarray(model(x, training=True)) for _ in range(2)]
    assert not np.allclose(trained[0], probs, atol=1e-6)
    assert not np.allclose(trained[0], trained[1], atol=1e-6)


def test_transfer_model_starts_with_a_frozen_backbone() -> None:
    model = make_model("transfer", (96, 96, 3), 2, backbone="mobilenet", weights=None)
    assert model.output_shape == (None, 2)
    backbone = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name != "augmentation"
    )
    assert backbone.trainable is False
    assert backbone.count_params() > 100_000
    # Only the head (one Dense kernel and bias) is trainable at first.
    trainable = model.trainable_weights
    assert [tuple(w.shape) for w in trainable] == [(backbone.output_shape[-1], 2), (2,)]


@pytest.mark.parametrize(
    ("architecture", "backbone"), [("article-9", "mobilenet"), ("transfer", "vgg99")]
)
def test_unknown_names_are_rejected(architecture: str, backbone: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_model(architecture, (96, 96, 3), 2, backbone=backbone, weights=None)


def test_transfer_backbone_runs_at_its_own_size_and_starts_from_a_checkpoint(
    tmp_path: Path,
) -> None:
    """``backbone_size`` resizes inside the model, so the input (the contract) stays; the
    weights are the same list, so a checkpoint at the input size starts it."""
    small = make_model("transfer", (32, 32, 3), 2, weights=None, augmentation=False)
    small.save(tmp_path / "small.keras")
    large = make_model(
        "transfer", (32, 32, 3), 2, weights=None, augmentation=False, backbone_size=48, seed=1
    )
    assert large.input_shape == (None, 32, 32, 3)
    assert large.get_layer("backbone_resize").output.shape == (None, 48, 48, 3)
    assert not all(np.array_equal(a, b) for a, b in zip(small.get_weights(), large.get_weights()))

    start_from(large, str(tmp_path / "small.keras"))

    assert all(np.array_equal(a, b) for a, b in zip(small.get_weights(), large.get_weights()))
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    assert np.asarray(large(x)).shape == (2, 2)
    other = make_model("scratch", (32, 32, 3), 2)
    with pytest.raises(ValueError, match="do not fit"):
        start_from(other, str(tmp_path / "small.keras"))


@pytest.mark.parametrize(("batch_norm", "moves"), [("adapt", True), ("frozen", False)])
def test_fine_tuning_updates_batch_norm_statistics_unless_frozen(
    batch_norm: str, moves: bool
) -> None:
    """Unfrozen and trained, the backbone's batch norm follows the photos, or keeps its
    statistics and scale when frozen; the convolutions are trainable either way."""
    model = make_model("transfer", (32, 32, 3), 2, weights=None, augmentation=False)
    unfreeze(model, batch_norm)
    layers = list(model._flatten_layers())
    norm = next(layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization))
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(conv.trainable for conv in convs)
    before = [w.numpy().copy() for w in (norm.moving_mean, norm.gamma)]
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.fit(x, np.eye(2)[[0, 1] * 4], epochs=1, verbose=0)
    after = [w.numpy() for w in (norm.moving_mean, norm.gamma)]
    assert [not np.array_equal(a, b) for a, b in zip(before, after)] == [moves, moves]
    with pytest.raises(ValueError, match="unknown batch norm"):
        unfreeze(model, "sometimes")
