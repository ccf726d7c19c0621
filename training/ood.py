"""The "neither cat nor dog" signal: a Mahalanobis score on the model's own features.

Fit (at export): the pooled backbone features of training photos, scaled to
unit length, give one mean per class and a shared covariance. Score (in the
exported graph): the smallest squared Mahalanobis distance from an image's
unit-length features to a class mean, divided by the feature count, so higher
means less like the training photos. Scaling to unit length matters: images
that are neither often have weak features (a small norm) that sit close to the
class means in raw feature space, but point elsewhere. The
threshold is the score that a chosen share (99 %) of validation photos stay
under; an image scoring above it is "neither".

The covariance is kept as its eigenvectors: all of them for up to ``MAX_RANK``
feature dimensions (the exact Mahalanobis distance), else the ``MAX_RANK``
largest with the rest of the variance spread evenly over the remaining
directions (probabilistic PCA). That keeps a 1,280-feature fit at 0.7 MB
instead of the 6.6 MB of a full precision matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

METHOD = "mahalanobis"
PASS_RATE = 0.99  # share of validation cat/dog photos that must pass
EPSILON = 1e-12  # keeps an all-zero feature vector from dividing by zero
MAX_RANK = 128  # covariance directions kept exactly (see the module docstring)


def feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The pooled-features layer: named ``features``, else the last global average pooling."""
    names = [layer.name for layer in model.layers]
    if "features" in names:
        return model.get_layer("features")
    pools = [
        layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)
    ]
    if not pools:
        raise ValueError(f"{model.name}: no pooled feature layer to fit an OOD score on")
    return pools[-1]


def features_and_probabilities(model: keras.Model) -> keras.Model:
    """One pass, two outputs: pooled features [N, D] and the model's probabilities [N, C]."""
    return keras.Model(
        model.input, [feature_layer(model).output, model.output], name=f"{model.name}_features"
    )


@dataclass
class Gaussians:
    """Class means and a shared precision ``basis @ diag(scales) @ basis.T + residual * I``.

    Squared distance of ``d``: ``sum(scales * (d @ basis) ** 2) + residual * |d|^2``.
    """

    means: np.ndarray  # [C, D]
    basis: np.ndarray  # [D, K] orthonormal columns, K <= D
    scales: np.ndarray  # [K]
    residual: float

    def precision(self) -> np.ndarray:
        """The full [D, D] precision matrix these stand for."""
        dims = self.basis.shape[0]
        return (self.basis * self.scales) @ self.basis.T + self.residual * np.eye(dims)


def fit_gaussians(
    features: np.ndarray, labels: np.ndarray, ridge: float = 1e-3, rank: int = MAX_RANK
) -> Gaussians:
    """Class means and the shared, slightly ridged covariance's precision, kept to
    ``rank`` directions plus an even rest when there are more feature dimensions."""
    features = features.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(features)
    # A small ridge keeps directions the photos never vary in from exploding the score.
    # (floored, so even constant features give a finite precision).
    spread = max(float(np.trace(covariance)) / len(covariance), 1e-6)
    covariance += ridge * spread * np.eye(len(covariance))
    variances, vectors = np.linalg.eigh(covariance)
    variances, vectors = variances[::-1], vectors[:, ::-1]  # largest first
    if rank >= len(variances):
        scales, residual = 1 / variances, 0.0
    else:
        rest = float(np.mean(variances[rank:]))  # each remaining direction's variance
        variances, vectors = variances[:rank], vectors[:, :rank]
        scales, residual = 1 / variances - 1 / rest, 1 / rest
    return Gaussians(
        means.astype(np.float32), vectors.astype(np.float32), scales.astype(np.float32), residual
    )


def unit_length(features: np.ndarray) -> np.ndarray:
    """Each feature vector divided by its length (zero vectors stay zero)."""
    features = features.astype(np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + EPSILON)


def mahalanobis_scores(features: np.ndarray, fit: Gaussians) -> np.ndarray:
    """Numpy twin of ``MahalanobisScore``: min over classes of d^T P d, over D,
    for the unit-length ``features`` (the fit made on unit-length ones)."""
    diff = unit_length(features)[:, None, :] - fit.means[None].astype(np.float64)
    projected = diff @ fit.basis.astype(np.float64)
    distances = (projected**2) @ fit.scales.astype(np.float64) + fit.residual * np.sum(
        diff**2, axis=-1
    )
    return (distances.min(axis=1) / features.shape[1]).astype(np.float32)


def choose_threshold(scores: np.ndarray, pass_rate: float = PASS_RATE) -> float:
    """The smallest score that at least ``pass_rate`` of ``scores`` do not exceed."""
    return float(np.quantile(scores, pass_rate, method="higher"))


@keras.saving.register_keras_serializable(package="catdog")
class MahalanobisScore(keras.layers.Layer):
    """Features [N, D] -> score [N]: scaled to unit length, then the min over classes
    of the squared Mahalanobis distance (a ``Gaussians`` fit of rank K), over D."""

    def __init__(self, num_classes: int, dims: int, rank: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes, self.dims, self.rank = num_classes, dims, rank or dims
        self.means = self.add_weight(
            shape=(num_classes, dims), initializer="zeros", trainable=False, name="means"
        )
        self.basis = self.add_weight(
            shape=(dims, self.rank), initializer="zeros", trainable=False, name="basis"
        )
        self.scales = self.add_weight(
            shape=(self.rank,), initializer="zeros", trainable=False, name="scales"
        )
        self.residual = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="residual"
        )

    def call(self, features: Any) -> Any:
        ops = keras.ops
        length = ops.sqrt(ops.sum(features * features, axis=1, keepdims=True))
        features = features / (length + EPSILON)
        diff = ops.expand_dims(features, 1) - ops.expand_dims(self.means, 0)
        projected = ops.einsum("ncd,dk->nck", diff, self.basis)
        distances = ops.sum(projected * projected * self.scales, axis=-1)
        distances = distances + self.residual * ops.sum(diff * diff, axis=-1)
        return ops.min(distances, axis=1) / float(self.dims)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "dims": self.dims,
            "rank": self.rank,
        }


def make_score_layer(fit: Gaussians) -> MahalanobisScore:
    """A ``MahalanobisScore`` layer holding a fit."""
    layer = MahalanobisScore(*fit.means.shape, rank=fit.basis.shape[1], name="ood_score")
    layer.means.assign(fit.means)
    layer.basis.assign(fit.basis)
    layer.scales.assign(fit.scales)
    layer.residual.assign(fit.residual)
    return layer


def collect_features(
    extractor: keras.Model, dataset: tf.data.Dataset
) -> tuple[np.ndarray, np.ndarray]:
    """Features and integer labels of every image of an (images, one-hot) dataset."""
    features, labels = [], []
    for images, onehot in dataset:
        feats, _ = extractor(images, training=False)
        features.append(np.asarray(feats))
        labels.append(np.argmax(onehot.numpy(), axis=1))
    return np.concatenate(features), np.concatenate(labels)


def fit_ood(
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    pass_rate: float = PASS_RATE,
) -> tuple[MahalanobisScore, dict[str, Any]]:
    """Fit on the training images, set the threshold on the validation images.

    Returns the score layer and the ``"ood"`` metadata object.
    """
    extractor = features_and_probabilities(model)
    train_features, train_labels = collect_features(extractor, train)
    fit = fit_gaussians(unit_length(train_features), train_labels)
    val_features, _ = collect_features(extractor, validation)
    layer = make_score_layer(fit)
    # Scored by the exported layer itself (float32), so the threshold is what serving sees.
    val_scores = np.asarray(layer(val_features.astype(np.float32)))
    threshold = choose_threshold(val_scores, pass_rate)
    info = {
        "method": METHOD,
        "output": "ood_score",
        "meaning": "min over classes of the squared Mahalanobis distance of the pooled "
        "backbone features, scaled to unit length, to the class mean (shared "
        "covariance), divided by the feature count; higher = less like the training photos",
        "covariance": "exact"
        if layer.rank == layer.dims
        else f"top {layer.rank} directions and an even rest (probabilistic PCA)",
        "rule": "ood_score > threshold: neither a cat nor a dog",
        "threshold": threshold,
        "target_pass_rate": pass_rate,
        "validation_pass_rate": float(np.mean(val_scores <= threshold)),
        "validation_images": len(val_scores),
        "fitted_on": {"split": "train", "images": len(train_features)},
        "feature_dims": int(train_features.shape[1]),
        "feature_layer": feature_layer(model).name,
    }
    return layer, info
