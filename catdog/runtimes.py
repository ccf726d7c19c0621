"""Model runtimes: an exported version folder in, a numpy-in, numpy-out predictor out.

A model base folder holds integer version folders (the TF Serving layout); each
has the SavedModel and ``metadata.json`` with the contract. TensorFlow is
imported only when a SavedModel is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from catdog.contract import SIGNATURE, ModelContract

Predictor = Callable[[np.ndarray], np.ndarray]


def version_dirs(base: str | Path) -> dict[int, Path]:
    """Integer-named version folders under a model base folder."""
    base = Path(base)
    if not base.is_dir():
        return {}
    return {int(p.name): p for p in base.iterdir() if p.is_dir() and p.name.isdigit()}


def latest_version(base: str | Path) -> Path:
    """The highest integer version folder under ``base``."""
    versions = version_dirs(base)
    if not versions:
        raise ValueError(f"{base}: no integer version folders (expected e.g. {base}/1/)")
    return versions[max(versions)]


def load_saved_model(version_dir: str | Path) -> tuple[Predictor, ModelContract]:
    """Load an exported version: a numpy-in, numpy-out predictor and its contract.

    Raises ``ValueError`` naming the path and the problem when the folder is not
    a usable catdog model (missing files, bad metadata, wrong signature).
    """
    import tensorflow as tf  # only when a SavedModel is served: the import takes seconds

    version_dir = Path(version_dir)
    if not (version_dir / "saved_model.pb").is_file():
        raise ValueError(f"{version_dir}: no saved_model.pb (not a SavedModel folder)")
    contract = ModelContract.read(version_dir)
    try:
        loaded = tf.saved_model.load(str(version_dir))
    except Exception as exc:  # TF raises many types for a damaged SavedModel
        raise ValueError(f"{version_dir}: SavedModel does not load: {exc}") from exc
    if SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"{version_dir}: no {SIGNATURE!r} signature (has {list(loaded.signatures)})"
        )
    signature = loaded.signatures[SIGNATURE]
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(f"{version_dir}: signature takes {len(inputs)} inputs, expected 1")
    ((input_name, spec),) = inputs.items()
    expected = [None, *contract.input_shape]
    if spec.dtype != tf.float32 or spec.shape.as_list() != expected:
        raise ValueError(
            f"{version_dir}: signature input is {spec.dtype.name} "
            f"{spec.shape.as_list()}, metadata says float32 {expected}"
        )
    output_name = next(iter(signature.structured_outputs))

    def predict(images: np.ndarray) -> np.ndarray:
        result = signature(**{input_name: tf.convert_to_tensor(images, tf.float32)})
        return result[output_name].numpy()

    predict.loaded = loaded  # keep the trackable objects alive with the function
    return predict, contract
