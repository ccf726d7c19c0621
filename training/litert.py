"""Convert an exported version's SavedModel to LiteRT (``model.tflite``), checked.

``add_litert`` converts with TensorFlow's ``tf.lite.TFLiteConverter.from_saved_model``
(float32, no quantisation) and rewrites the result exactly
(``training.flatbuffer.shrink``). It runs the SavedModel signature and the
LiteRT model on the same images (a few random ones plus the real ones given) and writes
``model.tflite`` only when every probability agrees within ``TOLERANCE``, and
every ``ood_score`` if the model has one within ``TOLERANCE`` times its own size
(when above 1), as ``training.export`` checks the SavedModel against Keras. The
file appears atomically (written beside it, then renamed), and ``metadata.json``
records both runtimes with the parity measured, so a served version says how
closely LiteRT matches TensorFlow.

Two callers: ``training.export.export_model`` converts in the staging folder
before the version is renamed into place, and ``python -m training litert
<version folder>`` adds the file to an already exported version (its SavedModel
is only read).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from catdog.contract import LITERT_FILE, METADATA_FILE, SIGNATURE, ModelContract
from catdog.litert import LiteRTModel
from catdog.runtimes import OOD_SCORE, load_signature
from training.flatbuffer import shrink

TOLERANCE = 1e-5
RANDOM_IMAGES = 4
CHUNK = 32  # images per model call during the check


def parity(name: str, want: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """The largest |difference| between two runtimes' outputs called ``name``, and the
    largest relative to each value's size above 1 for an ``ood_score`` (for other
    outputs, the same). A NaN anywhere comes out as NaN, which no tolerance passes."""
    want = np.asarray(want, np.float64)
    diff = np.abs(want - got)
    size = np.maximum(1.0, np.abs(want)) if name == OOD_SCORE else 1.0
    return float(np.max(diff)), float(np.max(diff / size))


def convert(version_dir: str | Path) -> bytes:
    """The version's SavedModel serving signature as a LiteRT flatbuffer: float32
    arithmetic, constants folded and exact int8 kernels stored as int8
    (``training.flatbuffer.shrink``)."""
    import tensorflow as tf

    version_dir = Path(version_dir)
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(version_dir), signature_keys=[SIGNATURE]
        )
        return shrink(bytes(converter.convert()))
    except Exception as exc:  # the converter raises many types
        raise ValueError(f"{version_dir}: LiteRT conversion failed: {exc}") from exc


def add_litert(
    version_dir: str | Path,
    check_images: np.ndarray | Iterable[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
    checked_on: str | None = None,
) -> dict[str, Any]:
    """Convert, check and write ``model.tflite`` into a version folder; return its record.

    ``check_images`` are float32 [N, H, W, 3] in [0, 1]: one array or an iterable
    of batches (so a whole test split never has to fit in memory). Raises
    ``ValueError`` (and writes nothing) when the runtimes disagree by more than
    ``tolerance``. The record is also stored as ``runtimes.litert`` in metadata.json;
    ``checked_on`` says there where the real images came from.
    """
    import tensorflow as tf

    version_dir = Path(version_dir)
    contract = ModelContract.read(version_dir)
    content = convert(version_dir)
    saved_model, names, _ = load_signature(version_dir)
    litert = LiteRTModel(content, threads=1, where=f"{version_dir}/{LITERT_FILE} (converted)")
    if set(litert.output_names) != set(names):
        raise ValueError(
            f"{version_dir}: LiteRT outputs {litert.output_names} differ from "
            f"the SavedModel's {names}"
        )
    rng = np.random.default_rng(0)
    probes = rng.random((RANDOM_IMAGES, *contract.input_shape), dtype=np.float32)
    diffs = {name: 0.0 for name in names}
    scaled = {name: 0.0 for name in names}  # an OOD score's difference over its size
    real = 0
    for batch, is_real in _batches(probes, check_images):
        if not len(batch):
            continue
        if batch.shape[1:] != contract.input_shape:
            raise ValueError(
                f"check images are {batch.shape}, the model takes {contract.input_shape}"
            )
        expected = saved_model(batch)
        got = litert.infer(batch)
        for name in names:
            diff, relative = parity(name, expected[name], got[name])
            # np.max, not max(): a NaN must survive to the check below
            diffs[name] = float(np.max([diffs[name], diff]))
            scaled[name] = float(np.max([scaled[name], relative]))
        real += len(batch) if is_real else 0
    if not all(scaled[n] <= tolerance for n in names):  # also refuses NaN
        raise ValueError(
            f"{version_dir}: LiteRT disagrees with the SavedModel: max |diff| {diffs} "
            f"(ood_score: relative to its size above 1) > {tolerance} over {real} real and "
            f"{RANDOM_IMAGES} random images"
        )
    probabilities = next((n for n in names if n != OOD_SCORE), names[0])
    record: dict[str, Any] = {
        "file": LITERT_FILE,
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "converter": (
            "tf.lite.TFLiteConverter.from_saved_model (float32, no quantisation), "
            "then training.flatbuffer.shrink (constants folded, exact int8 kernels as int8)"
        ),
        "tensorflow": tf.__version__,
        "ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
        "outputs": sorted(names),
        "max_abs_diff": diffs[probabilities],
        "checked_images": real,
        "checked_on": checked_on,
        "random_images": RANDOM_IMAGES,
        "tolerance": tolerance,
        "checked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if OOD_SCORE in diffs:
        record["max_abs_diff_ood_score"] = diffs[OOD_SCORE]
        record["max_scaled_diff_ood_score"] = scaled[OOD_SCORE]
    _write_atomically(version_dir / LITERT_FILE, content)
    _record(version_dir, record)
    return record


def _batches(
    probes: np.ndarray, images: np.ndarray | Iterable[np.ndarray] | None
) -> Iterator[tuple[np.ndarray, bool]]:
    """(batch of at most CHUNK images, whether they are real) for the random then real ones."""
    yield probes, False
    if images is None:
        return
    arrays = [images] if isinstance(images, np.ndarray) else images
    for array in arrays:
        array = np.asarray(array, np.float32)
        for start in range(0, len(array), CHUNK):
            yield array[start : start + CHUNK], True


def _record(version_dir: Path, litert: dict[str, Any]) -> None:
    """Store both runtimes in metadata.json (rewritten atomically, everything else kept)."""
    path = version_dir / METADATA_FILE
    data = json.loads(path.read_text())
    runtimes = data.get("runtimes") if isinstance(data.get("runtimes"), dict) else {}
    data["runtimes"] = {
        **runtimes,
        "tensorflow": {"files": ["saved_model.pb", "variables/"], "signature": SIGNATURE},
        "litert": litert,
    }
    _write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _write_atomically(path: Path, content: bytes) -> None:
    """Write a file beside ``path`` and rename it over ``path``: readers see old or new."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def folder_images(
    folder: str | Path, image_size: tuple[int, int], limit: int | None = None
) -> tuple[list[Path], Iterator[np.ndarray]]:
    """The image files under ``folder`` (sorted) and their preprocessed batches.

    Files are preprocessed as the service does (``catdog.preprocessing``); any
    that cannot be decoded are skipped.
    """
    from catdog.preprocessing import ImageError, preprocess
    from training.data import IMAGE_EXTENSIONS

    files = sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )[:limit]

    def batches() -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        for path in files:
            try:
                batch.append(preprocess(path, image_size))
            except ImageError:
                continue
            if len(batch) == CHUNK:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    return files, batches()


def add_litert_from_data(
    version_dir: str | Path, data: str | Path | None = None, limit: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """``add_litert`` checked on real photos: ``<data>/test`` if it exists, else ``data``.

    ``version_dir`` may also be a model base folder (its latest version is used).
    Returns the version folder and the record written.
    """
    from catdog.runtimes import latest_version, version_dirs

    version_dir = Path(version_dir)
    if not (version_dir / "saved_model.pb").is_file() and version_dirs(version_dir):
        version_dir = latest_version(version_dir)
    contract = ModelContract.read(version_dir)
    images, checked_on = None, None
    if data is not None:
        folder = Path(data) / "test" if (Path(data) / "test").is_dir() else Path(data)
        files, images = folder_images(folder, contract.image_size, limit)
        if not files:
            raise ValueError(f"{folder}: no images to check the conversion on")
        checked_on = f"{folder}" + (f" (first {limit} files)" if limit else "")
    return version_dir, add_litert(version_dir, images, checked_on=checked_on)


def format_record(version_dir: Path, record: dict[str, Any]) -> str:
    """One line saying what was written and how closely the runtimes agree."""
    ood = record.get("max_abs_diff_ood_score")
    return (
        f"wrote {version_dir / record['file']} ({record['bytes']:,} bytes): "
        f"max |Δp| {record['max_abs_diff']:.2g}"
        + ("" if ood is None else f", max |Δood_score| {ood:.2g}")
        + f" over {record['checked_images']} real and {record['random_images']} random images "
        f"(tolerance {record['tolerance']:g})"
    )
