"""Model builders: the tutorial's three small CNNs, and two stronger ones.

Every model takes float32 images in [0, 1] of shape (height, width, 3) and
returns softmax probabilities over the classes; anything else a backbone needs
(its own input scaling, augmentation) lives inside the model.
"""

from __future__ import annotations

import keras
from keras import layers

ARTICLE_ARCHITECTURES = ("article-1", "article-2", "article-3")
ARCHITECTURES = (*ARTICLE_ARCHITECTURES, "scratch", "transfer")
BACKBONES = {
    # name: (constructor, extra kwargs, scaling layer from [0, 1] to what it expects)
    "mobilenet": (keras.applications.MobileNet, {"alpha": 0.25}, (2.0, -1.0)),
    "mobilenet_v2": (keras.applications.MobileNetV2, {"alpha": 1.0}, (2.0, -1.0)),
    "efficientnet_b0": (keras.applications.EfficientNetB0, {}, (255.0, 0.0)),
}


def make_article_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    filters: int = 16,
    blocks: int = 1,
    name: str = "article",
) -> keras.Model:
    """The tutorial's CNN: ``blocks`` × (Conv2D 3×3 + MaxPool 2×2) → Flatten → Dense(128)."""
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for _ in range(blocks):
        x = layers.Conv2D(filters, (3, 3), activation="relu")(x)
        x = layers.MaxPooling2D((2, 2), padding="same")(x)  # 109 -> 55, as in the tutorial
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def make_augmentation(seed: int = 42) -> keras.Sequential:
    """Random flips, rotations, zooms and contrast; active only while training."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.1, seed=seed),
            layers.RandomZoom(0.1, seed=seed),
            layers.RandomContrast(0.1, value_range=(0, 1), seed=seed),
        ],
        name="augmentation",
    )


def make_scratch_model(
    input_shape: tuple[int, int, int], num_classes: int, seed: int = 42
) -> keras.Model:
    """A from-scratch CNN: augmentation, residual separable blocks with batch norm, GAP, dropout.

    A strided stem and a pooling layer divide the resolution by 4 before the
    blocks; each block halves it again and adds a strided 1x1 shortcut. At
    128 px a training step costs about 4 ms per image on two CPU cores, so
    30 epochs of the 20k split fit in under an hour.
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = make_augmentation(seed)(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2)(x)
    for filters in (64, 128, 256):
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
        for _ in range(2):
            x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, shortcut])
    x = layers.SeparableConv2D(384, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3, seed=seed)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="scratch")


def make_transfer_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    backbone: str = "mobilenet",
    weights: str | None = "imagenet",
    seed: int = 42,
    augmentation: bool = True,
    backbone_size: int = 0,
) -> keras.Model:
    """An ImageNet backbone (frozen at first) under augmentation, GAP, dropout and a head.

    ``augmentation=False`` leaves the in-model augmentation out, for runs that
    augment in the data pipeline instead (``training.augment``). The pooled
    backbone features are the layer named ``features`` (used by ``training.ood``).
    ``backbone_size``: the model resizes its input (the contract's size) to this
    square side before the backbone, inside the graph. Trained with random-resized
    crops, objects look larger in training than in a whole photo; running the
    backbone larger makes up for it (with MobileNet alpha 0.25 on this data, 288-320
    is best: ``docs/training.md``). 0 keeps the input size.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    build, kwargs, (factor, offset) = BACKBONES[backbone]
    side = (backbone_size,) * 2 if backbone_size else input_shape[:2]
    base = build(include_top=False, weights=weights, input_shape=(*side, 3), **kwargs)
    base.trainable = False
    inputs = keras.Input(shape=input_shape, name="images")
    x = make_augmentation(seed)(inputs) if augmentation else inputs
    if tuple(side) != tuple(input_shape[:2]):
        x = layers.Resizing(*side, interpolation="bilinear", name="backbone_resize")(x)
    x = layers.Rescaling(factor, offset=offset, name="backbone_scaling")(x)
    # fit's training flag reaches the backbone (a training=False here would be passed
    # over): batch norm is kept in inference mode, if wanted, by training.train
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dropout(0.2, seed=seed)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"transfer_{backbone}")


def make_model(
    architecture: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    backbone: str = "mobilenet",
    weights: str | None = "imagenet",
    seed: int = 42,
    augmentation: bool = True,
    backbone_size: int = 0,
) -> keras.Model:
    """Build any architecture by name (see ``ARCHITECTURES``).

    ``augmentation=False``: no in-model augmentation; ``backbone_size``: the side the
    backbone runs at (both for ``transfer``).
    """
    if architecture in ARTICLE_ARCHITECTURES:
        filters, blocks = {"article-1": (16, 1), "article-2": (32, 1), "article-3": (32, 2)}[
            architecture
        ]
        name = architecture.replace("-", "_")
        return make_article_model(input_shape, num_classes, filters, blocks, name=name)
    if architecture == "scratch":
        return make_scratch_model(input_shape, num_classes, seed=seed)
    if architecture == "transfer":
        return make_transfer_model(
            input_shape,
            num_classes,
            backbone,
            weights,
            seed=seed,
            augmentation=augmentation,
            backbone_size=backbone_size,
        )
    raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")


def copy_weights(source: keras.Model, target: keras.Model, what: str = "the source") -> None:
    """Give ``target`` the weights of ``source``: the same layers, maybe another input or
    backbone size (a resize has no weights). ValueError if the weights do not line up."""
    weights = source.get_weights()
    if [w.shape for w in weights] != [w.shape for w in target.get_weights()]:
        raise ValueError(f"{what}: its weights do not fit this architecture")
    target.set_weights(weights)
