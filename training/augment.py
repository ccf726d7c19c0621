"""Robust-photo augmentation: how real pet photos differ from the Kaggle set.

Applied to training batches inside the tf.data pipeline (float32 [0, 1],
shape [B, H, W, 3]), all in-graph TensorFlow ops so it runs beside the train
step on the CPU. One batch goes through, per image:

* framing: a random-resized crop (area 30–100 %, aspect 3:4–4:3), or a
  letterbox-like zoom-out along one axis with bars; a mirror half the time and
  a small rotation (±15°) some of the time. Crop, zoom, mirror and rotation are
  one affine warp per image, so the batch is resampled once;
* colour and lighting: exposure, gamma, contrast, saturation, sometimes grey;
* softness: a Gaussian blur, or a down- then up-scale, for a share of images;
* sensor noise for a few, and JPEG re-compression (quality 15–90) for many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class RobustAugment:
    """Probabilities and ranges of the robust augmentation (see the module docstring)."""

    crop_area: tuple[float, float] = (0.3, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    letterbox: float = 0.2  # share of images zoomed out along one axis (bars)
    letterbox_squeeze: tuple[float, float] = (1.0, 1.7)
    rotate: float = 0.4
    max_degrees: float = 15.0
    colour: float = 0.8
    grey: float = 0.05
    blur: float = 0.2
    rescale: float = 0.2  # down- then up-scaled, factor drawn per batch
    rescale_factor: tuple[float, float] = (0.25, 0.7)
    noise: float = 0.15
    jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (15, 90)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Augment a float32 batch in [0, 1]; the result has the same shape and range."""
        images = self.framing(images)
        images = self.lighting(images)
        images = self.softness(images)
        images = self.compression(images)
        return tf.clip_by_value(images, 0.0, 1.0)

    def framing(self, images: tf.Tensor) -> tf.Tensor:
        """One affine warp per image: crop or letterbox, mirror, rotation."""
        shape = tf.shape(images)
        n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

        # Crop: input pixels per output pixel along x and y (<= 1 zooms in).
        area = _uniform(n, *self.crop_area)
        aspect = tf.exp(_uniform(n, math.log(self.crop_aspect[0]), math.log(self.crop_aspect[1])))
        sx = tf.minimum(tf.sqrt(area * aspect), 1.0)
        sy = tf.minimum(tf.sqrt(area / aspect), 1.0)
        # Letterbox: one axis squeezed (> 1 zooms out), the other untouched.
        boxed = _chance(n, self.letterbox)
        squeeze = _uniform(n, *self.letterbox_squeeze)
        along_x = _chance(n, 0.5)
        sx = tf.where(boxed, tf.where(along_x, squeeze, 1.0), sx)
        sy = tf.where(boxed, tf.where(along_x, 1.0, squeeze), sy)
        # Where the crop's centre lands: anywhere that keeps a zoomed-in crop inside.
        # (pixel centres run 0 .. size - 1, so the middle is at (size - 1) / 2)
        mid_x, mid_y = (width - 1) / 2, (height - 1) / 2
        cx = mid_x + _uniform(n, -0.5, 0.5) * tf.abs(1.0 - sx) * width
        cy = mid_y + _uniform(n, -0.5, 0.5) * tf.abs(1.0 - sy) * height

        angle = tf.where(
            _chance(n, self.rotate), _uniform(n, -1.0, 1.0) * math.radians(self.max_degrees), 0.0
        )
        mirror = tf.where(_chance(n, 0.5), -1.0, 1.0)
        cos, sin = tf.cos(angle), tf.sin(angle)
        # Output pixel u (relative to the centre) reads input c + R(angle) @ diag(sx, sy) @ u.
        a0, a1 = cos * sx * mirror, -sin * sy
        b0, b1 = sin * sx * mirror, cos * sy
        a2 = cx - a0 * mid_x - a1 * mid_y
        b2 = cy - b0 * mid_x - b1 * mid_y
        zeros = tf.zeros_like(a0)
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        # Bars and corners: black most of the time, sometimes another flat grey.
        fill = tf.where(tf.random.uniform([]) < 0.7, 0.0, tf.random.uniform([]))
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=shape[1:3],
            fill_value=fill,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )

    def lighting(self, images: tf.Tensor) -> tf.Tensor:
        """Exposure, gamma, contrast and saturation per image; a few turned grey."""
        n = tf.shape(images)[0]
        on = tf.reshape(_chance(n, self.colour), [-1, 1, 1, 1])

        def per_image(low: float, high: float) -> tf.Tensor:
            return tf.reshape(tf.exp(_uniform(n, math.log(low), math.log(high))), [-1, 1, 1, 1])

        out = tf.pow(tf.maximum(images, 1e-6), per_image(0.7, 1.4))
        out = out * per_image(0.65, 1.4)
        mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
        out = mean + (out - mean) * per_image(0.7, 1.3)
        grey = tf.reduce_mean(out, axis=3, keepdims=True)
        out = grey + (out - grey) * per_image(0.6, 1.4)
        out = tf.where(tf.reshape(_chance(n, self.grey), [-1, 1, 1, 1]), grey, out)
        return tf.where(on, tf.clip_by_value(out, 0.0, 1.0), images)

    def softness(self, images: tf.Tensor) -> tf.Tensor:
        """Blur, down-up-scale or noise for a share of the images each.

        The batch is already shuffled, so leading slices of it are random
        images: only those slices are computed, which keeps this cheap.
        """
        shape = tf.shape(images)
        n = tf.cast(shape[0], tf.float32)
        counts = [tf.cast(tf.round(n * p), tf.int32) for p in (self.blur, self.rescale, self.noise)]
        blur, scaled, noisy, rest = tf.split(
            images, [*counts, shape[0] - sum(counts)], axis=0, num=4
        )
        blur = _gaussian_blur(blur, tf.random.uniform([], 0.6, 2.0))
        small = tf.cast(
            tf.cast(shape[1:3], tf.float32) * tf.random.uniform([], *self.rescale_factor), tf.int32
        )
        scaled = tf.image.resize(tf.image.resize(scaled, small, antialias=True), shape[1:3])
        sigma = tf.random.uniform([tf.shape(noisy)[0], 1, 1, 1], 0.0, 0.04)
        noisy = noisy + tf.random.normal(tf.shape(noisy)) * sigma
        return tf.concat([blur, scaled, noisy, rest], axis=0)

    def compression(self, images: tf.Tensor) -> tf.Tensor:
        """JPEG re-compression at a random quality for a share of the images."""
        images = tf.clip_by_value(images, 0.0, 1.0)
        n = tf.shape(images)[0]
        low, high = self.jpeg_quality
        quality = tf.random.uniform([n], low, high + 1, dtype=tf.int32)
        chosen = _chance(n, self.jpeg)

        def one(args: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
            image, q, on = args
            return tf.cond(
                on,
                lambda: tf.image.adjust_jpeg_quality(image, q),
                lambda: image,
            )

        return tf.map_fn(
            one,
            (images, quality, chosen),
            fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32),
        )


def _uniform(n: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.uniform([n], low, high)


def _chance(n: tf.Tensor, p: float) -> tf.Tensor:
    return tf.random.uniform([n]) < p


def _gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, radius: int = 3) -> tf.Tensor:
    """Separable Gaussian blur (one sigma for the batch), edges mirrored."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    out = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, vertical, [1, 1, 1, 1], "VALID")
    # An empty batch comes back with the padded shape; reshaping fixes it (and is a no-op else).
    return tf.reshape(out, tf.shape(images))
