"""Export a trained model as a SavedModel in the TF Serving layout, and load it back.

``models/<name>/<version>/`` holds ``saved_model.pb`` + ``variables/`` with the
serving signature float32 [None, H, W, 3] in [0, 1] -> probabilities [None, C],
and ``metadata.json`` (the contract plus how the model was made and how well it
does). With an OOD fit (``training.ood``) the signature returns a dict instead:
``probabilities`` [None, C] and ``ood_score`` [None], and metadata.json gets an
``"ood"`` object with the method and threshold. A version is written to a
hidden folder, checked, then renamed into place, so a watcher never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from catdog.contract import CLASS_NAMES, ModelContract
from catdog.runtimes import (
    OOD_SCORE,
    PROBABILITIES,
    Predictor,
    latest_version,
    load_signature,
    version_dirs,
)
from training.litert import TOLERANCE, add_litert, parity
from training.models import copy_weights, make_model
from training.ood import MahalanobisScore, features_and_probabilities
from training.quantize import Int8Conv  # noqa: F401  (checkpoints may hold Int8Conv layers)

# Every output of a model by name: "probabilities", and "ood_score" when fitted.
Outputs = Callable[[np.ndarray], dict[str, np.ndarray]]


def load_outputs(
    path: str | Path, backbone_size: int | None = None, tta: bool = False
) -> tuple[Outputs, ModelContract]:
    """All outputs of a ``.keras`` checkpoint, a version folder or a model base folder.

    A single-output model's output is returned as ``probabilities``. For a
    checkpoint, ``backbone_size`` and ``tta`` are as in :func:`export_run`.
    """
    path = Path(path)
    if path.suffix == ".keras":
        model = load_checkpoint(path, backbone_size)
        model = with_flip_averaging(model) if tta else model
        height, width = model.input_shape[1:3]

        def keras_outputs(images: np.ndarray) -> dict[str, np.ndarray]:
            return _named(model(images, training=False))

        return keras_outputs, ModelContract(image_size=(height, width))
    if backbone_size or tta:
        raise ValueError(f"{path}: backbone size and mirror averaging apply to checkpoints")
    if path.is_dir() and not (path / "saved_model.pb").exists() and version_dirs(path):
        path = latest_version(path)
    call, names, contract = load_signature(path)
    if len(names) == 1:
        only = names[0]

        def single(images: np.ndarray) -> dict[str, np.ndarray]:
            return {PROBABILITIES: call(images)[only]}

        single.loaded = call.loaded  # type: ignore[attr-defined]  # keeps the model alive
        return single, contract
    if PROBABILITIES not in names:
        raise ValueError(f"{path}: outputs {list(names)}, expected {PROBABILITIES!r} among them")
    return call, contract


def load_checkpoint(path: str | Path, backbone_size: int | None = None) -> keras.Model:
    """A ``.keras`` checkpoint; with ``backbone_size``, its weights in the same transfer
    model with the backbone run at that side (rebuilt from the run's ``config.json``)."""
    model = keras.saving.load_model(path)
    if not backbone_size:
        return model
    config = _read_json(Path(path).parent / "config.json")
    if config.get("architecture") != "transfer":
        raise ValueError(f"{path}: a backbone size needs a transfer run's checkpoint")
    resized = make_model(
        "transfer",
        model.input_shape[1:],
        len(CLASS_NAMES),
        backbone=config.get("backbone", "mobilenet"),
        weights=None,
        augmentation=config.get("augment", "basic") == "basic",
        backbone_size=backbone_size,
    )
    copy_weights(model, resized, str(path))
    return resized


def load_predictor(path: str | Path) -> tuple[Predictor, ModelContract]:
    """Probabilities only, from a ``.keras`` checkpoint, a version folder or a base folder."""
    outputs, contract = load_outputs(path)

    def predict(images: np.ndarray) -> np.ndarray:
        return outputs(images)[PROBABILITIES]

    predict.loaded = outputs  # type: ignore[attr-defined]  # keeps the model alive
    return predict, contract


def _named(result: Any) -> dict[str, np.ndarray]:
    """A Keras model's result as outputs by name (a bare tensor is the probabilities)."""
    if isinstance(result, dict):
        return {name: np.asarray(value) for name, value in result.items()}
    if isinstance(result, (list, tuple)):
        raise ValueError("a model with several outputs must name them (return a dict)")
    return {PROBABILITIES: np.asarray(result)}


def export_model(
    model: keras.Model,
    base: str | Path,
    metadata: dict[str, Any] | None = None,
    version: int | None = None,
    check_images: np.ndarray | None = None,
) -> Path:
    """Write ``model`` as ``base/<version>/``; verify the reload matches; return the folder."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = max(version_dirs(base), default=0) + 1
    final = base / str(version)
    if final.exists():
        raise ValueError(f"{final} already exists; choose another --version")
    height, width = model.input_shape[1:3]
    contract = ModelContract(
        class_names=CLASS_NAMES,
        image_size=(height, width),
        extra={
            **(metadata or {}),
            "version": version,
            "name": base.name,
            "parameters": model.count_params(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    staging = base / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
        # Not model.export(): it traces model(x) with ``training`` unset, and Keras
        # augmentation layers then default to training mode, i.e. stay active in serving.
        # No archive.track(model): the endpoint tracks the variables it uses, and
        # track() would store each a second time (as the Keras variable too).
        archive = keras.export.ExportArchive()
        archive.add_endpoint("serve", lambda images: model(images, training=False), [spec])
        # (a dict-output model gives a signature with one named output per key)
        archive.write_out(str(staging), verbose=False)
        contract.write(staging)
        _check_reload(model, staging, check_images)
        add_litert(staging, check_images)  # model.tflite, checked against the SavedModel
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_reload(model: keras.Model, folder: Path, images: np.ndarray | None) -> None:
    """Fail unless tf.saved_model.load gives the Keras model's outputs.

    Probabilities must agree within 1e-5; an OOD score within 1e-5 of its size.
    """
    height, width = model.input_shape[1:3]
    rng = np.random.default_rng(0)
    probe = rng.random((4, height, width, 3), dtype=np.float32)
    if images is not None and len(images):
        probe = np.concatenate([probe, images.astype(np.float32)])
    outputs, _ = load_outputs(folder)
    expected = _named(model(probe, training=False))
    got = outputs(probe)
    if set(got) != set(expected):
        raise ValueError(f"exported outputs {sorted(got)}, the Keras model has {sorted(expected)}")
    for name, want in expected.items():
        diff, relative = parity(name, want, got[name])
        if not relative <= TOLERANCE:  # also refuses NaN
            raise ValueError(f"exported {name} disagrees with the Keras model: max |diff| = {diff}")


def export_run(
    run: str | Path,
    out: str | Path,
    version: int | None = None,
    data_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    tta: bool = False,
    ood: bool = False,
    ood_limit: int | None = None,
    backbone_size: int | None = None,
) -> Path:
    """Export a training run's best checkpoint with its settings and metrics as metadata.

    With ``backbone_size`` the backbone runs at that side instead of the one it was
    trained at (the same weights; the input stays the contract's size): choose it on
    validation (``evaluate --backbone-size``). With ``tta`` the exported model
    averages the probabilities of each image and its mirror image (test-time
    augmentation; twice the compute per image). With
    ``ood`` (needs ``data_dir``) an OOD score is fitted on (about ``ood_limit``)
    training images, its threshold set on validation, and exported as ``ood_score``.
    """
    from training.data import make_dataset
    from training.evaluate import evaluate_outputs
    from training.ood import fit_ood

    run = Path(run)
    checkpoint = Path(checkpoint or run / "best.keras")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to export")
    if ood and data_dir is None:
        raise ValueError("fitting the OOD score needs --data (training and validation images)")
    trained = load_checkpoint(checkpoint, backbone_size)
    size = trained.input_shape[1:3]
    score, ood_info = None, None
    if ood:
        score, ood_info = fit_ood(
            trained,
            make_dataset(Path(data_dir) / "train", size, cache=False, limit=ood_limit),
            make_dataset(Path(data_dir) / "validation", size, cache=False),
        )
    model = serving_model(trained, tta, score)
    config = _read_json(run / "config.json")
    result = _read_json(run / "result.json")
    metadata: dict[str, Any] = {
        "architecture": config.get("architecture"),
        "training": {k: v for k, v in config.items() if k not in ("tensorflow", "keras")},
        "dataset_fingerprint": config.get("dataset_fingerprint"),
        "epoch_seconds": result.get("mean_epoch_seconds"),
        "test_time_augmentation": "mean of image and horizontal mirror" if tta else None,
        "backbone_size": backbone_size or config.get("backbone_size") or None,
        "checkpoint": str(checkpoint),
        "metrics": {},
    }
    if ood_info is not None:
        metadata["ood"] = ood_info
    check_images = None
    if data_dir is not None:
        threshold = None if ood_info is None else ood_info["threshold"]

        def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
            return _named(model(images, training=False))

        for split in ("validation", "test"):
            folder = Path(data_dir) / split
            if folder.is_dir():
                started = time.perf_counter()
                dataset = make_dataset(folder, size, cache=False)
                report = evaluate_outputs(outputs, dataset, threshold=threshold)
                report["seconds"] = round(time.perf_counter() - started, 1)
                metadata["metrics"][split] = report
        val = make_dataset(Path(data_dir) / "validation", size, batch_size=8, cache=False)
        check_images = next(iter(val))[0].numpy()
    return export_model(model, out, metadata, version, check_images)


def serving_model(
    model: keras.Model, tta: bool = False, score: MahalanobisScore | None = None
) -> keras.Model:
    """The graph to export: probabilities (mirror-averaged with ``tta``), and
    with a fitted ``score`` layer a dict of ``probabilities`` and ``ood_score``.

    The score is computed on the features of the image as given (not its mirror).
    """
    if score is None:
        return with_flip_averaging(model) if tta else model
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    features, probabilities = features_and_probabilities(model)(inputs)
    if tta:
        mirrored = model(_HorizontalFlip(name="mirror")(inputs))
        probabilities = keras.layers.Average(name="flip_average")([probabilities, mirrored])
    outputs = {PROBABILITIES: probabilities, OOD_SCORE: score(features)}
    return keras.Model(inputs, outputs, name=f"{model.name}_serving")


def with_flip_averaging(model: keras.Model) -> keras.Model:
    """Wrap a model so it returns the mean of its outputs for an image and its mirror."""
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    flipped = _HorizontalFlip(name="mirror")(inputs)
    averaged = keras.layers.Average(name="flip_average")([model(inputs), model(flipped)])
    return keras.Model(inputs, averaged, name=f"{model.name}_tta")


@keras.saving.register_keras_serializable(package="catdog")
class _HorizontalFlip(keras.layers.Layer):
    """Mirror images left to right (always, unlike ``RandomFlip``)."""

    def call(self, images: Any) -> Any:
        return keras.ops.flip(images, axis=2)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
