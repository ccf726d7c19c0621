"""Exact rewrites of a converted LiteRT flatbuffer (``training.flatbuffer``).

* The converter leaves an ``Int8Conv`` kernel as CAST/MUL/TRANSPOSE operators;
  ``shrink`` folds them and stores the kernels as int8 behind DEQUANTIZE, and
  the outputs do not change by a single bit against the folded float32 file.
* A kernel that is not exactly int8 times a per-channel scale stays float32.
* A float model gains nothing and loses nothing, its metadata (the minimum
  runtime version) included; a stateful graph (operators without outputs)
  goes through.
* Exported through ``export_model``, an int8 network's files are about a
  quarter of a float one's, and each weight is stored once.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from keras import layers

from catdog.contract import LITERT_FILE
from training.export import export_model
from training.flatbuffer import exact_int8, fold_constants, operator_counts, shrink
from training.quantize import Int8Conv

pytestmark = pytest.mark.filterwarnings(  # noise from inside Keras 3.15, not from the project
    "ignore:__array__ implementation doesn't accept:DeprecationWarning"
)
SIZE = 24


def _model(int8: bool, seed: int = 0) -> keras.Model:
    """Three convolutions (one depthwise) and a dense layer, random weights. The last
    kernel (16,384 weights) is large enough that the converter does not fold it."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="images")
    if int8:
        x = Int8Conv(64, 3, 2, name="a")(inputs)
        x = Int8Conv(0, 5, 1, name="b")(layers.ReLU(6.0)(x))
        x = Int8Conv(256, 1, 1, name="c")(layers.ReLU(6.0)(x))
    else:
        x = layers.Conv2D(64, 3, 2, "same", name="a")(inputs)
        x = layers.DepthwiseConv2D(5, 1, "same", name="b")(layers.ReLU(6.0)(x))
        x = layers.Conv2D(256, 1, 1, "same", name="c")(layers.ReLU(6.0)(x))
    x = layers.GlobalAveragePooling2D()(layers.ReLU(6.0)(x))
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, Int8Conv):
            q = rng.integers(-127, 128, layer.kernel_int8.shape).astype(np.int8)
            q[0, 0] = 127  # every channel reaches the range, as quantize_per_channel's do
            scale = rng.uniform(0.001, 0.02, layer.scale.shape).astype(np.float32)
            layer.set_weights([q, scale, rng.normal(0, 0.1, layer.bias.shape).astype("float32")])
    return model


def _converted(model: keras.Model, folder: Path) -> bytes:
    """The converter's own output for the model's exported SavedModel."""
    version = export_model(model, folder, version=1)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(version), ["serving_default"])
    return bytes(converter.convert())


def _run(content: bytes, images: np.ndarray) -> np.ndarray:
    runner = Interpreter(model_content=content, num_threads=1).get_signature_runner()
    (name,) = runner.get_input_details()
    return np.concatenate([next(iter(runner(**{name: image[None]}).values())) for image in images])


def test_int8_kernels_are_folded_stored_as_int8_and_give_identical_outputs(
    tmp_path: Path,
) -> None:
    raw = _converted(_model(int8=True), tmp_path / "m")
    assert {"CAST", "MUL"} <= operator_counts(raw).keys()  # the kernels are computed per call

    small = shrink(raw)
    counts = operator_counts(small)
    assert counts["DEQUANTIZE"] == 3
    assert counts["CONV_2D"] == 2 and counts["DEPTHWISE_CONV_2D"] == 1
    assert "CAST" not in counts and "TRANSPOSE" not in counts
    assert len(small) < len(raw)  # the converter stored its small kernels as float32

    assert fold_constants(schema.ModelT.InitFromPackedBuf(raw, 0)) >= 2  # c's CAST and MUL
    folded = shrink(raw, int8=False)
    assert "DEQUANTIZE" not in operator_counts(folded) and len(folded) > 2 * len(small)

    images = np.random.default_rng(1).random((4, SIZE, SIZE, 3), dtype=np.float32)
    np.testing.assert_array_equal(_run(small, images), _run(folded, images))
    np.testing.assert_allclose(_run(small, images), _run(raw, images), atol=1e-6)


def test_exact_int8_finds_the_scales_and_refuses_anything_else() -> None:
    rng = np.random.default_rng(2)
    q = rng.integers(-127, 128, (6, 3, 3, 4)).astype(np.int8)
    q[:, 0, 0, 0] = 127  # each channel reaches the range (as quantize_per_channel's do)
    scales = rng.uniform(1e-4, 1.0, 6).astype(np.float32)
    kernel = q.astype(np.float32) * scales[:, None, None, None]
    kernel[5] = 0  # an all-zero channel
    found = exact_int8(kernel, axis=0)
    assert found is not None
    got_q, got_scales = found
    restored = got_q.astype(np.float32) * got_scales[:, None, None, None]
    np.testing.assert_array_equal(restored, kernel)
    np.testing.assert_array_equal(got_q[:5], q[:5])

    nudged = kernel.copy()
    nudged[2, 1, 1, 1] = np.nextafter(nudged[2, 1, 1, 1], np.float32(np.inf))
    assert exact_int8(nudged, axis=0) is None
    assert exact_int8(rng.normal(0, 1, (4, 8)).astype(np.float32), axis=0) is None


def test_a_float_model_is_left_as_it_computes(tmp_path: Path) -> None:
    raw = _converted(_model(int8=False), tmp_path / "m")
    small = shrink(raw)
    assert operator_counts(small) == operator_counts(raw)
    assert abs(len(small) - len(raw)) < 0.01 * len(raw)
    images = np.random.default_rng(3).random((2, SIZE, SIZE, 3), dtype=np.float32)
    np.testing.assert_array_equal(_run(small, images), _run(raw, images))


def test_an_exported_int8_network_is_a_quarter_of_the_float_one(tmp_path: Path) -> None:
    sizes = {}
    for int8 in (False, True):
        version = export_model(_model(int8), tmp_path / f"int8-{int8}", version=1)
        variables = sum(p.stat().st_size for p in (version / "variables").iterdir())
        sizes[int8] = (variables, (version / LITERT_FILE).stat().st_size)
        if int8:
            assert operator_counts((version / LITERT_FILE).read_bytes())["DEQUANTIZE"] == 3
    parameters = _model(False).count_params()
    assert parameters * 4 < sizes[False][0] < parameters * 4 * 1.2  # each weight stored once
    assert sizes[True][0] < 0.4 * sizes[False][0]
    assert sizes[True][1] < 0.4 * sizes[False][1]


def _metadata(content: bytes) -> dict[str, bytes]:
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    return {
        _text(m.name): bytes(np.asarray(model.buffers[m.buffer].data, np.uint8))
        for m in model.metadata or []
    }


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


def test_the_files_metadata_survives(tmp_path: Path) -> None:
    raw = _converted(_model(int8=True), tmp_path / "m")
    before = _metadata(raw)
    assert before["min_runtime_version"].strip(b"\0")  # the converter writes one
    assert _metadata(shrink(raw)) == before


def test_a_stateful_graph_with_operators_without_outputs_goes_through(tmp_path: Path) -> None:
    class Counter(tf.Module):
        def __init__(self) -> None:
            self.total = tf.Variable(tf.zeros([4]))

        @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            self.total.assign_add(x)
            return self.total * 2.0

    counter = Counter()
    tf.saved_model.save(counter, str(tmp_path / "counter"), signatures=counter.__call__)
    raw = bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "counter")).convert())
    assert "ASSIGN_VARIABLE" in operator_counts(raw)  # an operator with no output
    small = shrink(raw)
    assert operator_counts(small) == operator_counts(raw)
    runner = Interpreter(model_content=small).get_signature_runner()
    first = next(iter(runner(x=np.ones(4, np.float32)).values()))
    second = next(iter(runner(x=np.ones(4, np.float32)).values()))
    np.testing.assert_array_equal(first, 2.0)
    np.testing.assert_array_equal(second, 4.0)
