"""Int8 weights: batch norm folded exactly, per-channel int8 kernels, ``Int8Conv``.

* A convolution followed by batch norm equals the folded convolution.
* Per-channel quantisation uses the full int8 range of every channel and is off
  by at most half a step.
* ``Int8Conv`` computes the convolution of ``float32(q) * scale`` and survives
  a ``.keras`` round trip; ``copy_quantized`` fills an int8 network from a float one.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from training.quantize import (
    INT8_MAX,
    Int8Conv,
    copy_quantized,
    fold_batch_norm,
    quantize_per_channel,
)

pytestmark = pytest.mark.filterwarnings(  # noise from inside Keras 3.15, not from the project
    "ignore:__array__ implementation doesn't accept:DeprecationWarning"
)


def _batch_norm(channels: int, seed: int) -> layers.BatchNormalization:
    """A built batch norm with moving statistics far from the identity."""
    rng = np.random.default_rng(seed)
    layer = layers.BatchNormalization(epsilon=1e-3)
    layer.build((None, 8, 8, channels))
    gamma, beta, mean = (rng.normal(0, 1, channels).astype(np.float32) for _ in range(3))
    variance = rng.uniform(0.1, 2.0, channels).astype(np.float32)
    layer.set_weights([gamma, beta, mean, variance])
    return layer


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_folding_batch_norm_into_the_convolution_changes_nothing(
    depthwise: bool, stride: int
) -> None:
    images = np.random.default_rng(0).normal(0, 1, (2, 9, 9, 6)).astype(np.float32)
    if depthwise:
        conv = layers.DepthwiseConv2D(3, stride, "same", use_bias=False)
    else:
        conv = layers.Conv2D(5, 3, stride, "same", use_bias=False)
    batch_norm = _batch_norm(6 if depthwise else 5, seed=1)
    expected = np.asarray(batch_norm(conv(images), training=False))
    kernel, bias = fold_batch_norm(conv, batch_norm)
    folded = keras.ops.depthwise_conv if depthwise else keras.ops.conv
    got = np.asarray(folded(images, kernel, stride, padding="same")) + bias
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depthwise", [False, True])
def test_per_channel_quantisation_is_within_half_a_step(depthwise: bool) -> None:
    rng = np.random.default_rng(2)
    kernel = rng.normal(0, 1, (3, 3, 4, 1 if depthwise else 6)).astype(np.float32)
    channel = (slice(None), slice(None), 1, slice(None)) if depthwise else (..., 2)
    kernel[channel] *= 100  # channels of very different size keep their own step
    kernel[(slice(None), slice(None), 3, slice(None)) if depthwise else (..., 0)] = 0
    q, scale = quantize_per_channel(kernel, depthwise)
    assert q.dtype == np.int8 and q.shape == kernel.shape
    assert scale.shape == ((4, 1) if depthwise else (6,))
    restored = q.astype(np.float32) * scale
    steps = np.broadcast_to(scale, kernel.shape)
    assert np.all(np.abs(restored - kernel) <= steps / 2 * (1 + 1e-6))
    largest = np.abs(q).max(axis=(0, 1, 3) if depthwise else (0, 1, 2))
    zero = 3 if depthwise else 0
    assert largest[zero] == 0 and np.delete(largest, zero).min() == INT8_MAX
    assert np.ravel(scale)[zero] == 1.0


@pytest.mark.parametrize("filters", [0, 7])
def test_int8_conv_is_the_convolution_of_its_dequantised_kernel(
    filters: int, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    images = rng.normal(0, 1, (2, 10, 10, 4)).astype(np.float32)
    layer = Int8Conv(filters, 3, 2)
    layer.build(images.shape)
    q = rng.integers(-127, 128, layer.kernel_int8.shape).astype(np.int8)
    scale = rng.uniform(0.001, 0.1, layer.scale.shape).astype(np.float32)
    bias = rng.normal(0, 1, layer.bias.shape).astype(np.float32)
    layer.set_weights([q, scale, bias])
    conv = keras.ops.depthwise_conv if filters == 0 else keras.ops.conv
    expected = np.asarray(conv(images, q.astype(np.float32) * scale, 2, padding="same")) + bias
    np.testing.assert_allclose(np.asarray(layer(images)), expected, rtol=1e-6, atol=1e-6)
    assert layer.kernel_int8.dtype == "int8" and not layer.trainable_weights

    inputs = keras.Input((10, 10, 4))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "int8.keras")
    loaded = keras.saving.load_model(tmp_path / "int8.keras")
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))


def _network(int8: bool) -> keras.Model:
    """conv + bn + relu6, depthwise + bn, then a dense layer copied as is."""
    inputs = keras.Input((12, 12, 3))
    if int8:
        x = Int8Conv(8, 3, 2, name="conv")(inputs)
    else:
        x = layers.Conv2D(8, 3, 2, "same", use_bias=False, name="conv")(inputs)
        x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.ReLU(6.0)(x)
    if int8:
        x = Int8Conv(0, 3, 1, name="dw")(x)
    else:
        x = layers.DepthwiseConv2D(3, 1, "same", use_bias=False, name="dw")(x)
        x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, name="dense")(x))


def test_copy_quantized_fills_an_int8_network_from_a_float_one() -> None:
    source = _network(int8=False)
    rng = np.random.default_rng(4)
    for name, channels in (("conv_bn", 8), ("dw_bn", 8)):
        source.get_layer(name).set_weights(_batch_norm(channels, seed=5).get_weights())
    target = _network(int8=True)
    copy_quantized(source, target)
    np.testing.assert_array_equal(
        target.get_layer("dense").get_weights()[0], source.get_layer("dense").get_weights()[0]
    )
    kernel, bias = fold_batch_norm(source.get_layer("conv"), source.get_layer("conv_bn"))
    q, scale, stored_bias = target.get_layer("conv").get_weights()
    np.testing.assert_array_equal(q, quantize_per_channel(kernel, False)[0])
    np.testing.assert_array_equal(stored_bias, bias)
    images = rng.random((4, 12, 12, 3), dtype=np.float32)
    expected = np.asarray(source(images, training=False))
    got = np.asarray(target(images))
    # int8 weights: close to the float network, not equal to it
    assert 0 < np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


@pytest.mark.parametrize(
    "conv",
    [
        layers.Conv2D(4, 3, padding="same", use_bias=True),
        layers.DepthwiseConv2D(3, padding="same", use_bias=False, depth_multiplier=2),
    ],
)
def test_only_bias_free_single_multiplier_convolutions_fold(conv: layers.Layer) -> None:
    conv.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="only bias-free"):
        fold_batch_norm(conv, _batch_norm(4 if isinstance(conv, layers.Conv2D) else 6, seed=6))
