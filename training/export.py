"""Export a trained model as a SavedModel in the TF Serving layout, and load it back.

``models/<name>/<version>/`` holds ``saved_model.pb`` + ``variables/`` with the
serving signature float32 [None, H, W, 3] in [0, 1] -> probabilities [None, C],
and ``metadata.json`` (the contract plus how the model was made and how well it
does). A version is written to a hidden folder, checked, then renamed into
place, so a watcher never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from catdog.contract import CLASS_NAMES, ModelContract
from catdog.runtimes import Predictor, latest_version, load_saved_model, version_dirs
from training.litert import add_litert

TOLERANCE = 1e-5


def load_predictor(path: str | Path) -> tuple[Predictor, ModelContract]:
    """A predictor from a ``.keras`` checkpoint, a version folder or a model base folder."""
    path = Path(path)
    if path.suffix == ".keras":
        model = keras.saving.load_model(path)
        height, width = model.input_shape[1:3]
        return (lambda x: np.asarray(model(x, training=False))), ModelContract(
            image_size=(height, width)
        )
    if path.is_dir() and not (path / "saved_model.pb").exists() and version_dirs(path):
        path = latest_version(path)
    return load_saved_model(path)


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
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda images: model(images, training=False), [spec])
        archive.write_out(str(staging), verbose=False)
        contract.write(staging)
        _check_reload(model, staging, check_images)
        add_litert(staging, check_images)  # model.tflite, checked against the SavedModel
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_reload(model: keras.Model, folder: Path, images: np.ndarray | None) -> None:
    """Fail unless tf.saved_model.load gives the Keras model's outputs (within 1e-5)."""
    height, width = model.input_shape[1:3]
    rng = np.random.default_rng(0)
    probe = rng.random((4, height, width, 3), dtype=np.float32)
    if images is not None and len(images):
        probe = np.concatenate([probe, images.astype(np.float32)])
    predict, _ = load_saved_model(folder)
    expected = np.asarray(model(probe, training=False))
    got = predict(probe)
    diff = float(np.max(np.abs(expected - got)))
    if diff > TOLERANCE:
        raise ValueError(f"exported model disagrees with the Keras model: max |diff| = {diff}")


def export_run(
    run: str | Path,
    out: str | Path,
    version: int | None = None,
    data_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    tta: bool = False,
) -> Path:
    """Export a training run's best checkpoint with its settings and metrics as metadata.

    With ``tta`` the exported model averages the probabilities of each image and
    its mirror image (test-time augmentation; twice the compute per image).
    """
    from training.data import make_dataset
    from training.evaluate import evaluate_predictor

    run = Path(run)
    checkpoint = Path(checkpoint or run / "best.keras")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to export")
    model = keras.saving.load_model(checkpoint)
    if tta:
        model = with_flip_averaging(model)
    config = _read_json(run / "config.json")
    result = _read_json(run / "result.json")
    metadata: dict[str, Any] = {
        "architecture": config.get("architecture"),
        "training": {k: v for k, v in config.items() if k not in ("tensorflow", "keras")},
        "dataset_fingerprint": config.get("dataset_fingerprint"),
        "epoch_seconds": result.get("mean_epoch_seconds"),
        "test_time_augmentation": "mean of image and horizontal mirror" if tta else None,
        "checkpoint": str(checkpoint),
        "metrics": {},
    }
    check_images = None
    if data_dir is not None:
        size = model.input_shape[1:3]
        predict = lambda x: np.asarray(model(x, training=False))  # noqa: E731
        for split in ("validation", "test"):
            folder = Path(data_dir) / split
            if folder.is_dir():
                started = time.perf_counter()
                report = evaluate_predictor(predict, make_dataset(folder, size, cache=False))
                report["seconds"] = round(time.perf_counter() - started, 1)
                metadata["metrics"][split] = report
        val = make_dataset(Path(data_dir) / "validation", size, batch_size=8, cache=False)
        check_images = next(iter(val))[0].numpy()
    return export_model(model, out, metadata, version, check_images)


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
