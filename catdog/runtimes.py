"""Model runtimes: an exported version folder in, numpy-in, numpy-out inference out.

A model base folder holds integer version folders (the TF Serving layout); each
has the SavedModel, ``metadata.json`` with the contract and, when converted, the
same model as LiteRT (``model.tflite``). ``load_model`` runs a version with either
runtime behind one interface (``LoadedRuntime.infer``); ``auto`` picks LiteRT when
the folder has ``model.tflite``. TensorFlow is imported only when a SavedModel is
loaded, ``ai_edge_litert`` only when a LiteRT model is: serving LiteRT never
imports TensorFlow or Keras.

Outputs: a model has either one output (the probabilities) or a dict with
``probabilities`` [N, C] and ``ood_score`` [N] (an out-of-distribution score).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from catdog.contract import LITERT_FILE, METADATA_FILE, SIGNATURE, ModelContract
from catdog.quiet import drop_expected_gpu_noise

Predictor = Callable[[np.ndarray], np.ndarray]
RUNTIMES = ("auto", "litert", "tensorflow")
PROBABILITIES = "probabilities"
OOD_SCORE = "ood_score"

log = logging.getLogger("catdog.runtimes")


@dataclass(frozen=True)
class Inference:
    """A model call's outputs: probabilities [N, C] and, if the model has one, ood_score [N]."""

    probabilities: np.ndarray
    ood_score: np.ndarray | None = None


@dataclass(frozen=True)
class LoadedRuntime:
    """A version folder loaded by one runtime: call ``infer`` from any thread."""

    name: str  # "litert" or "tensorflow"
    contract: ModelContract
    version_dir: Path
    threads: int
    outputs: tuple[str, ...]  # the model's output names, e.g. ("ood_score", "probabilities")
    _call: Callable[[np.ndarray], Mapping[str, np.ndarray]] = field(repr=False)
    _probabilities: str = field(repr=False, default=PROBABILITIES)

    @property
    def has_ood_score(self) -> bool:
        """Whether the model returns an ``ood_score`` per image."""
        return OOD_SCORE in self.outputs

    @cached_property
    def input_shape(self) -> tuple[int, int, int]:
        """The contract's (height, width, 3), built once: ``infer`` checks every batch."""
        return self.contract.input_shape

    def infer(self, images: np.ndarray) -> Inference:
        """Run a float32 batch [N, H, W, 3] in [0, 1] (the contract's size) through the model."""
        expected = self.input_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images [N, {', '.join(map(str, expected))}], got {images.shape}"
            )
        count = len(images)
        if count == 0:
            empty = np.zeros((0, len(self.contract.class_names)), np.float32)
            return Inference(empty, np.zeros(0, np.float32) if self.has_ood_score else None)
        out = self._call(images)
        ood = out.get(OOD_SCORE)
        return Inference(
            probabilities=out[self._probabilities],
            ood_score=None if ood is None else np.reshape(ood, (count,)),
        )


def _probabilities_output(names: tuple[str, ...], where: Path) -> str:
    """Which output holds the probabilities: ``probabilities``, or the only one."""
    if PROBABILITIES in names:
        return PROBABILITIES
    if len(names) == 1:
        return names[0]
    raise ValueError(f"{where}: outputs {list(names)}, expected one or {PROBABILITIES!r}")


def version_number(name: str) -> int | None:
    """The number a version folder or URL names: up to 18 ASCII digits, else None.

    ``str.isdigit`` also accepts digits ``int`` cannot read (``"²"``), and ``int``
    refuses more than 4,300 digits, so all three checks come before ``int``.
    """
    return int(name) if len(name) <= 18 and name.isascii() and name.isdigit() else None


def version_dirs(base: str | Path) -> dict[int, Path]:
    """Integer-named version folders under a model base folder."""
    base = Path(base)
    if not base.is_dir():
        return {}
    numbered = ((version_number(p.name), p) for p in base.iterdir() if p.is_dir())
    return {number: p for number, p in numbered if number is not None}


def latest_version(base: str | Path) -> Path:
    """The highest integer version folder under ``base``."""
    versions = version_dirs(base)
    if not versions:
        raise ValueError(f"{base}: no integer version folders (expected e.g. {base}/1/)")
    return versions[max(versions)]


def load_model(version_dir: str | Path, runtime: str = "auto", threads: int = 1) -> LoadedRuntime:
    """Load a version folder with a runtime: ``auto``, ``litert`` or ``tensorflow``.

    ``auto`` runs ``model.tflite`` with LiteRT when the folder has one, else the
    SavedModel with TensorFlow. ``threads`` is the threads of one model call (a
    LiteRT interpreter's ``num_threads``; for TensorFlow, its process-wide
    intra-op pool, which can only be set before TensorFlow first runs). Raises
    ``ValueError`` naming the folder when it cannot be run with that runtime.
    """
    version_dir = Path(version_dir)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not version_dir.is_dir():
        raise ValueError(f"{version_dir}: not a folder")
    has_litert = (version_dir / LITERT_FILE).is_file()
    if runtime == "litert" and not has_litert:
        raise ValueError(
            f"{version_dir}: no {LITERT_FILE}, cannot serve it with LiteRT "
            "(add one with: python -m training litert <folder>, or serve with tensorflow)"
        )
    if runtime == "tensorflow" or (runtime == "auto" and not has_litert):
        return _load_tensorflow(version_dir, threads)
    return _load_litert(version_dir, threads)


def gpu_problem(runtime: str) -> str | None:
    """Why a model run by ``runtime`` would not use a GPU here; None when one is visible.

    LiteRT runs on the CPU only. For TensorFlow, the GPUs it lists: none when the
    driver, the CUDA libraries or the device are missing from the container.
    """
    if runtime != "tensorflow":
        return f"the {runtime} runtime runs on the CPU only"
    drop_expected_gpu_noise()
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return (
            "TensorFlow sees no GPU (no device, driver or CUDA libraries in the container: "
            "check the pod's nvidia.com/gpu limit and runtimeClassName)"
        )
    return None


def _load_litert(version_dir: Path, threads: int) -> LoadedRuntime:
    from catdog.litert import LiteRTModel  # imports ai_edge_litert (no TensorFlow)

    contract = ModelContract.read(version_dir)
    path = version_dir / LITERT_FILE
    content = path.read_bytes()
    recorded = (recorded_runtimes(contract).get("litert") or {}).get("sha256")
    if recorded and recorded != hashlib.sha256(content).hexdigest():
        raise ValueError(
            f"{path}: does not match the file {METADATA_FILE} records (sha256 differs); "
            "convert it again with: python -m training litert <folder>"
        )
    model = LiteRTModel(content, threads=threads, where=str(path))
    expected = contract.input_shape
    if model.input_shape != expected:
        raise ValueError(
            f"{path}: input [-1, {', '.join(map(str, model.input_shape))}], "
            f"{METADATA_FILE} says [-1, {', '.join(map(str, expected))}]"
        )
    return LoadedRuntime(
        name="litert",
        contract=contract,
        version_dir=version_dir,
        threads=threads,
        outputs=model.output_names,
        _call=model.infer,
        _probabilities=_probabilities_output(model.output_names, path),
    )


def _load_tensorflow(version_dir: Path, threads: int) -> LoadedRuntime:
    drop_expected_gpu_noise()
    _set_tensorflow_threads(threads)
    call, names, contract = load_signature(version_dir)
    return LoadedRuntime(
        name="tensorflow",
        contract=contract,
        version_dir=version_dir,
        threads=threads,
        outputs=names,
        _call=call,
        _probabilities=_probabilities_output(names, version_dir),
    )


def _set_tensorflow_threads(threads: int) -> None:
    """Size TensorFlow's intra-op pool, if it has not started yet (it is process-wide)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran: its pools are fixed
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            log.info(
                "TensorFlow already initialised with %s intra-op threads (0: one per core); "
                "keeping them, not %s",
                current,
                threads,
            )


def load_saved_model(version_dir: str | Path) -> tuple[Predictor, ModelContract]:
    """Load an exported version: a numpy-in, numpy-out predictor and its contract.

    The predictor returns the probabilities (the ``probabilities`` output of a
    model with several). Raises ``ValueError`` naming the path and the problem
    when the folder is not a usable catdog model (missing files, bad metadata,
    wrong signature).
    """
    version_dir = Path(version_dir)
    call, names, contract = load_signature(version_dir)
    output = _probabilities_output(names, version_dir)

    def predict(images: np.ndarray) -> np.ndarray:
        return call(images)[output]

    predict.loaded = call.loaded  # type: ignore[attr-defined]  # keeps the SavedModel alive
    return predict, contract


def load_signature(
    version_dir: Path,
) -> tuple[Callable[[np.ndarray], dict[str, np.ndarray]], tuple[str, ...], ModelContract]:
    """The SavedModel's serving signature as numpy in, outputs by name out."""
    import tensorflow as tf  # only when a SavedModel is served: the import takes seconds

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
    names = tuple(sorted(signature.structured_outputs))

    def call(images: np.ndarray) -> dict[str, np.ndarray]:
        result = signature(**{input_name: tf.convert_to_tensor(images, tf.float32)})
        return {name: value.numpy() for name, value in result.items()}

    call.loaded = loaded  # type: ignore[attr-defined]  # keep the trackable objects alive
    return call, names, contract


def recorded_runtimes(contract: ModelContract) -> dict[str, Any]:
    """The ``runtimes`` entry of a version's metadata (empty when it has none)."""
    runtimes = contract.extra.get("runtimes")
    return runtimes if isinstance(runtimes, dict) else {}
