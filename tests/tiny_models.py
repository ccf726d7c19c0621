"""Tiny exported version folders for runtime tests, made in a second or two, untrained.

``export_tiny(folder, ood=False)`` writes a SavedModel (``serving_default``:
float32 [None, 32, 32, 3] -> probabilities [None, 2], or with ``ood=True`` a dict
with ``probabilities`` [None, 2] and ``ood_score`` [None], the two-output layout
of an exported model with an out-of-distribution score) plus ``metadata.json``.
No ``model.tflite``: add one with ``training.litert.add_litert``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catdog.contract import ModelContract

SIZE = (32, 32)


def images(count: int, seed: int = 0) -> np.ndarray:
    """Random float32 images [count, 32, 32, 3] in [0, 1]."""
    return np.random.default_rng(seed).random((count, *SIZE, 3), dtype=np.float32)


def export_tiny(folder: Path, ood: bool = False, seed: int = 3) -> Path:
    """Write an untrained tiny conv net as a version folder; return the folder."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SIZE, 3), name="images")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    probabilities = keras.layers.Dense(2, activation="softmax", name="probabilities")(x)
    score = keras.layers.Reshape((), name="ood_score")(keras.layers.Dense(1)(x))
    outputs = {"probabilities": probabilities, "ood_score": score} if ood else probabilities
    model = keras.Model(inputs, outputs)
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, *SIZE, 3], tf.float32, name="images")
    archive.add_endpoint("serve", lambda images: model(images, training=False), [spec])
    archive.write_out(str(folder), verbose=False)
    ModelContract(image_size=SIZE, extra={"version": 1, "name": "tiny"}).write(folder)
    return folder
