"""Full-integer LiteRT from an exported version: the network computes in int8.

Version 4's ``model.tflite`` stores int8 kernels behind DEQUANTIZE, so it still
computes in float32. This makes the next version from such an exported folder
(its SavedModel is the input; no Keras checkpoint is needed):

1. ``rebuild``: the Keras model again, from the architecture its metadata names
   (``training.backbone``) and the SavedModel's variables, checked against the
   SavedModel's outputs to 1e-5 on random and real photos;
2. ``float_network``: each ``Int8Conv`` as a float convolution with the same
   kernel ``float32(q) × scale``, the form the converter can quantise
   (TensorFlow's converter does not fold an int8 kernel's CAST and MUL, and
   would quantise the product as an activation);
3. ``quantize``: TensorFlow's converter with int8 weights and activations, their
   ranges calibrated on training photos, float32 input and outputs. The
   "neither" score (``ood_score``: unit-length scaling, squared distances,
   a minimum) stays in float32: ``tf.lite.experimental.QuantizationDebugger``
   with those operators denylisted (``KEEP_FLOAT``); its input, the pooled
   features, comes out of the int8 network.

The SavedModel is copied unchanged (float32, for TensorFlow and GPUs);
``training.int8_check`` measures the int8 file against the contract it must
meet before the version folder is renamed into place.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from catdog.contract import SIGNATURE, ModelContract
from training.quantize import Int8Conv

# Layers whose operators stay float32 in the int8 file: the pooled features, the head and
# the "neither" score (cheap; in int8 the score loses its meaning, see docs/training.md).
KEEP_FLOAT = ("features", "classifier", "ood_score")
LITE0 = "efficientnet_lite0_int8"  # the backbone ``rebuild`` knows


def saved_variables(version_dir: str | Path) -> dict[str, np.ndarray]:
    """The serving signature's variables by path (``stem/kernel_int8``)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))  # kept alive while its variables are read
    return {v.name.split(":")[0]: v.numpy() for v in loaded.signatures[SIGNATURE].variables}


def fill(model: keras.Model, values: dict[str, np.ndarray], where: str) -> None:
    """Assign every weight of ``model``'s layers from ``values`` by ``<layer>/<weight>``."""
    used = set()
    for layer in model.layers:
        for weight in layer.weights:
            key = f"{layer.name}/{weight.name}"
            if key not in values:
                raise ValueError(f"{where}: no variable {key!r} for layer {layer.name!r}")
            weight.assign(values[key])
            used.add(key)
    unused = sorted(set(values) - used)
    if unused:
        raise ValueError(f"{where}: variables not in the rebuilt model: {unused[:5]}")


def rebuild(version_dir: str | Path) -> tuple[keras.Model, Any]:
    """Version ``version_dir``'s classifier (images -> probabilities, the backbone's
    ``features`` layer inside) and its "neither" score layer, from its SavedModel.

    Only the EfficientNet-Lite0 int8 network with a linear head (``teacher --int8``)
    is known; anything else is refused.
    """
    from training.lite0 import make_efficientnet_lite0
    from training.ood import Gaussians, make_score_layer

    version_dir = Path(version_dir)
    contract = ModelContract.read(version_dir)
    backbone = (contract.extra.get("training") or {}).get("backbone")
    if backbone != LITE0:
        raise ValueError(f"{version_dir}: backbone {backbone!r}; int8 rebuilds only {LITE0!r}")
    values = saved_variables(version_dir)
    network = make_efficientnet_lite0((*contract.image_size, 3), int8=True)
    head = keras.layers.Dense(len(contract.class_names), activation="softmax", name="classifier")
    model = keras.Model(network.input, head(network.output), name=f"teacher_{network.name}")
    score = {k: v for k, v in values.items() if k.startswith("ood_score/")}
    fill(model, {k: v for k, v in values.items() if k not in score}, str(version_dir))
    layer = None
    if score:
        fit = Gaussians(
            score["ood_score/means"],
            score["ood_score/basis"],
            score["ood_score/scales"],
            float(score["ood_score/residual"]),
        )
        layer = make_score_layer(fit)
    return model, layer


def float_network(model: keras.Model) -> keras.Model:
    """``model`` with each ``Int8Conv`` replaced by a float convolution with its kernel
    ``float32(q) × scale`` and its bias: the same function, in layers the converter
    can quantise. Weights are copied layer by layer, matched by name."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if not isinstance(layer, Int8Conv):
            return layer.__class__.from_config(layer.get_config())
        common = {"strides": layer.strides, "padding": "same", "name": layer.name}
        if layer.depthwise:
            return keras.layers.DepthwiseConv2D(layer.kernel_size, **common)
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, **common)

    copy = keras.models.clone_model(model, clone_function=clone)
    for old in model.layers:
        if isinstance(old, keras.Model) and any(isinstance(x, Int8Conv) for x in old.layers):
            raise ValueError(f"{old.name}: Int8Conv layers inside a nested model")
        new = copy.get_layer(old.name)
        if isinstance(old, Int8Conv):
            new.set_weights([np.asarray(old.kernel()), np.asarray(old.bias)])
        else:
            new.set_weights(old.get_weights())
    return copy


def _saved_model(model: keras.Model, folder: Path) -> None:
    """``model`` as a SavedModel with the project's serving signature (as ``export``)."""
    import tensorflow as tf

    height, width = model.input_shape[1:3]
    spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", lambda images: model(images, training=False), [spec])
    archive.write_out(str(folder), verbose=False)


def quantize(
    model: keras.Model, calibration: np.ndarray, keep_float: Sequence[str] = KEEP_FLOAT
) -> bytes:
    """``model`` as a LiteRT file with int8 weights and activations, ranges calibrated
    on ``calibration`` (float32 [N, H, W, 3] in [0, 1]); float32 input and outputs.

    The operators of the layers named in ``keep_float`` stay float32 (their tensor
    names start with ``<layer>``, as the converter names them from the graph).
    """
    import tensorflow as tf

    def photos() -> Iterator[list[np.ndarray]]:
        for image in np.asarray(calibration, np.float32):
            yield [image[None]]

    with tempfile.TemporaryDirectory(prefix="catdog-int8-") as folder:
        _saved_model(model, Path(folder))
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = photos
        if not keep_float:
            return bytes(converter.convert())
        nodes = float_nodes(tf.lite.TFLiteConverter.from_saved_model(folder).convert(), keep_float)
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=photos, debug_options=options
        )
        return bytes(debugger.get_nondebug_quantized_model())


def float_nodes(content: bytes, layers: Sequence[str]) -> list[str]:
    """The names of the tensors, in a converted float file, that the layers named
    ``layers`` compute (a name is ``.../<layer>_1/<op>`` or ``<layer>/<op>``), and of
    its outputs (their last operators are named after the signature, not the layer)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    names = [d["name"] for d in interpreter.get_tensor_details()]
    found = [
        name
        for name in names
        if any(f"/{layer}/" in f"/{name}" or f"/{layer}_1/" in f"/{name}" for layer in layers)
    ]
    if not found:
        raise ValueError(f"no operators of {list(layers)} in the converted model")
    return found + [d["name"] for d in interpreter.get_output_details()]
