"""tf.data loaders over a split folder (``<split>/<class>/<image>``).

Files are read by ``catdog.preprocessing.load_image`` (the same function the
service calls), cached as resized uint8, shuffled with a seed, batched, scaled
``/ 255`` to float32 and prefetched. Labels are one-hot in class order, or
mixed with a teacher's probabilities (soft labels) for distillation.

Evaluating also takes photos as people keep them: either raw Kaggle layout
(``cat.N.jpg`` files, or ``Cat/`` and ``Dog/`` folders), with the files that do
not decode left out and listed (``readable_images``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from catdog.contract import CLASS_NAMES, IMAGE_SIZE
from catdog.preprocessing import ImageError, load_image
from training.prepare import find_candidates

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp"}
AUTOTUNE = tf.data.AUTOTUNE


def list_images(
    folder: str | Path,
    class_names: tuple[str, ...] = CLASS_NAMES,
    limit: int | None = None,
    every_file: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Image paths under ``folder/<class>/`` in sorted order, with integer labels.

    The folder is a split's or raw Kaggle photos (``training.prepare.find_candidates``):
    class folders ``cat/`` and ``dog/`` (any case; files at any depth inside them), or
    ``cat.N.jpg`` files. Files are images by their extension (``IMAGE_EXTENSIONS``),
    or with ``every_file`` all are listed, for ``readable_images`` to say which are not.
    ``limit`` keeps about that many, evenly spread over the sorted list (so over
    every class), for quick runs.
    """
    paths, labels = [], []
    for found in find_candidates(Path(folder), class_names):
        if every_file or found.path.suffix.lower() in IMAGE_EXTENSIONS:
            paths.append(str(found.path))
            labels.append(class_names.index(found.label))
    if not paths:
        raise ValueError(f"{folder}: no images in {list(class_names)}")
    if limit is not None and limit < len(paths):
        keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return paths, np.asarray(labels, dtype=np.int32)


def readable_images(
    folder: str | Path,
    class_names: tuple[str, ...] = CLASS_NAMES,
    limit: int | None = None,
    image_size: tuple[int, int] = IMAGE_SIZE,
) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """``list_images`` over every file of the folder, keeping those that decode with the
    service's preprocessing; each other file as ``{"path", "reason"}``, the reason the
    service would give. ValueError when none decodes."""

    def problem(path: str) -> str | None:
        try:
            path.encode()
        except UnicodeEncodeError:  # tf.data takes UTF-8 paths only
            return "the file name is not UTF-8"
        try:
            load_image(path, image_size)
        except ImageError as exc:
            return exc.reason
        return None

    paths, labels = list_images(folder, class_names, limit, every_file=True)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        problems = list(pool.map(problem, paths))
    keep = [i for i, reason in enumerate(problems) if reason is None]
    if not keep:
        raise ValueError(f"{folder}: none of its {len(paths)} images decodes")
    skipped = [
        {"path": path, "reason": reason}
        for path, reason in zip(paths, problems)
        if reason is not None
    ]
    return [paths[i] for i in keep], labels[keep], skipped


def printable(path: str | Path) -> str:
    """A file name as any terminal can print it: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def relative(paths: list[str], folder: str | Path) -> list[str]:
    """``<class>/<file>`` for each path under ``folder``: how soft labels name photos."""
    root = Path(folder).resolve()
    return [Path(p).resolve().relative_to(root).as_posix() for p in paths]


def read_soft_labels(file: str | Path, paths: list[str], folder: str | Path) -> np.ndarray:
    """The teacher's probabilities for ``paths`` (files under ``folder``), in that order.

    ValueError naming a photo the file has no label for (another split, say).
    """
    saved = np.load(file)
    table = dict(zip(saved["paths"].tolist(), saved["probabilities"]))
    rows = []
    for name in relative(paths, folder):
        if name not in table:
            raise ValueError(f"{file}: no soft label for {name}")
        rows.append(table[name])
    return np.asarray(rows, dtype=np.float32)


def _read(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Graph wrapper around the project's preprocessing (uint8, before scaling)."""

    def read(p: bytes) -> np.ndarray:
        return load_image(p.decode(), image_size)

    pixels = tf.numpy_function(read, [path], tf.uint8, stateful=False)
    pixels.set_shape((*image_size, 3))
    return pixels


def scale_batch(pixels: tf.Tensor) -> tf.Tensor:
    """Graph twin of ``preprocessing.scale``: uint8 -> float32 / 255."""
    return tf.cast(pixels, tf.float32) / tf.constant(255.0, tf.float32)


def make_dataset(
    folder: str | Path,
    image_size: tuple[int, int] = IMAGE_SIZE,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 42,
    cache: bool | str = True,
    class_names: tuple[str, ...] = CLASS_NAMES,
    augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    limit: int | None = None,
    soft_labels: str | Path | None = None,
    distill_weight: float = 0.5,
    skip_unreadable: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1], float32 targets) from a split folder.

    Targets are one-hot labels; with ``soft_labels`` (a teacher's ``soft-labels.npz``,
    ``training.teacher``) they are ``distill_weight`` × the teacher's probabilities
    + the rest × one-hot. ``cache`` is True (memory), a file path (disk), or False.
    The training set is reshuffled every epoch from the seed; validation and test
    keep file order. ``augment`` (for training) maps each scaled float32 batch to
    an augmented one. ``limit`` keeps about that many files, evenly spread over
    every class. ``skip_unreadable`` takes every file of the class folders and leaves
    out those that do not decode, listed in the dataset's ``skipped``
    (``readable_images``; else one stops the run).
    """
    skipped: list[dict[str, str]] = []
    if skip_unreadable:
        paths, labels, skipped = readable_images(folder, class_names, limit, image_size)
    else:
        paths, labels = list_images(folder, class_names, limit)
    targets = np.eye(len(class_names), dtype=np.float32)[labels]
    if soft_labels:
        teacher = read_soft_labels(soft_labels, paths, folder)
        targets = distill_weight * teacher + (1.0 - distill_weight) * targets
    ds = tf.data.Dataset.from_tensor_slices((paths, targets))
    ds = ds.map(
        lambda p, y: (_read(p, image_size), y), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (scale_batch(x), y), num_parallel_calls=AUTOTUNE)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE)
    ds = ds.prefetch(AUTOTUNE)
    ds.file_paths = paths  # like keras.utils.image_dataset_from_directory
    ds.skipped = skipped
    ds.class_names = list(class_names)
    return ds


def load_splits(
    data_dir: str | Path,
    image_size: tuple[int, int] = IMAGE_SIZE,
    batch_size: int = 64,
    seed: int = 42,
    cache: bool | str = True,
    augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    soft_labels: str | Path | None = None,
    distill_weight: float = 0.5,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Training (shuffled, maybe augmented, maybe with a teacher's soft labels) and
    validation datasets of a prepared folder."""
    data_dir = Path(data_dir)
    train = make_dataset(
        data_dir / "train",
        image_size,
        batch_size,
        shuffle=True,
        seed=seed,
        cache=cache,
        augment=augment,
        soft_labels=soft_labels,
        distill_weight=distill_weight,
    )
    val = make_dataset(data_dir / "validation", image_size, batch_size, cache=cache)
    return train, val
