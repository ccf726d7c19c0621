"""Int8 weights, used exactly: batch norm folded into each convolution, kernels
stored as int8 with one float32 scale per output channel.

The quantised network *is* the model: its SavedModel keeps the int8 kernels as
variables and computes ``float32(q) * scale`` in the graph, so the float32
arithmetic after that is the same as any float model's. Its LiteRT file stores
the same int8 kernels behind DEQUANTIZE operators (``training.flatbuffer``),
so both files are about a quarter of their float32 size and agree with each
other as closely as float models do. Only weights are quantised, never
activations: no calibration data, no integer kernels.

A network is built twice, once with ``Conv2D``/``DepthwiseConv2D`` +
``BatchNormalization`` pairs and once with ``Int8Conv`` layers of the same names
(e.g. ``training.lite0.make_efficientnet_lite0(int8=True)``);
``copy_quantized`` fills the second from the first. Its accuracy is measured
afterwards like any other model's.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

INT8_MAX = 127  # symmetric: q in [-127, 127], zero point 0


@keras.saving.register_keras_serializable(package="catdog")
class Int8Conv(layers.Layer):
    """A convolution with bias whose kernel is int8 times a per-channel float32 scale.

    ``filters=0`` makes it depthwise (one filter per input channel). Padding is
    TensorFlow's "same". Nothing in it is trainable.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides

    @property
    def depthwise(self) -> bool:
        return self.filters == 0

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        out = channels if self.depthwise else self.filters
        k = self.kernel_size
        kernel_shape = (k, k, channels, 1) if self.depthwise else (k, k, channels, out)
        self.kernel_int8 = self.add_weight(
            name="kernel_int8", shape=kernel_shape, dtype="int8", initializer="zeros",
            trainable=False,
        )  # fmt: skip
        # the scale broadcasts over the kernel's output axis: (c, 1) for depthwise
        scale_shape = (channels, 1) if self.depthwise else (out,)
        self.scale = self.add_weight(
            name="scale", shape=scale_shape, initializer="ones", trainable=False
        )
        self.bias = self.add_weight(name="bias", shape=(out,), initializer="zeros", trainable=False)

    def kernel(self) -> Any:
        """The float32 kernel the convolution uses: ``float32(q) * scale``."""
        return ops.cast(self.kernel_int8, "float32") * self.scale

    def call(self, inputs: Any) -> Any:
        conv = ops.depthwise_conv if self.depthwise else ops.conv
        return conv(inputs, self.kernel(), self.strides, padding="same") + self.bias

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
        }


def fold_batch_norm(
    conv: layers.Layer, batch_norm: layers.BatchNormalization
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of one convolution equal to a bias-free ``conv`` then ``batch_norm``
    (inference mode: its moving statistics)."""
    depthwise = isinstance(conv, layers.DepthwiseConv2D)
    if conv.use_bias or (depthwise and conv.depth_multiplier != 1):
        raise ValueError(f"{conv.name}: only bias-free convolutions (depth multiplier 1) fold")
    gamma, beta, mean, variance = batch_norm.get_weights()
    factor = gamma / np.sqrt(variance + batch_norm.epsilon)
    kernel = conv.get_weights()[0]
    kernel = kernel * (factor[None, None, :, None] if depthwise else factor)
    return kernel.astype(np.float32), (beta - mean * factor).astype(np.float32)


def quantize_per_channel(kernel: np.ndarray, depthwise: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` with ``q`` int8 and ``float32(q) * scale`` the nearest such kernel.

    One scale per output channel (axis 2 of a depthwise kernel, else axis 3),
    ``max |w| / 127``; an all-zero channel gets scale 1.
    """
    axes = (0, 1, 3) if depthwise else (0, 1, 2)
    largest = np.max(np.abs(kernel), axis=axes, keepdims=True).astype(np.float32)
    scale = np.where(largest > 0, largest / np.float32(INT8_MAX), 1).astype(np.float32)
    q = np.clip(np.round(kernel / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.reshape((-1, 1) if depthwise else (-1,))


def copy_quantized(source: keras.Model, target: keras.Model) -> None:
    """Fill each ``Int8Conv`` of ``target`` from ``source``'s convolution of the same
    name and its batch norm ``<name>_bn``, folded and quantised; copy every other
    layer with weights by name."""
    for layer in target.layers:
        if isinstance(layer, Int8Conv):
            conv = source.get_layer(layer.name)
            kernel, bias = fold_batch_norm(conv, source.get_layer(f"{layer.name}_bn"))
            layer.set_weights([*quantize_per_channel(kernel, layer.depthwise), bias])
        elif layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
