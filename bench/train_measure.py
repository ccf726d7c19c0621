"""The measurements of ``bench.train``: the input pipeline alone, in-memory training steps,
and ``model.fit`` on the real pipeline, each returning plain dicts of timings.

The photos come from ``<data>/train`` (:func:`sample_training_photos`) and are
symlinked into a temporary split folder (:func:`subset_folder`) so the
project's own ``training.data.make_dataset`` reads them, exactly as in training.
TensorFlow and Keras are imported where they are used.
"""

from __future__ import annotations

import contextlib
import gc
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

Batch = tuple[np.ndarray, np.ndarray]


def sample_training_photos(train_dir: Path, count: int, seed: int) -> dict[str, list[Path]]:
    """``count`` photos in all, split evenly between the class folders, chosen reproducibly."""
    from catdog.contract import CLASS_NAMES
    from training.data import list_images

    paths, labels = list_images(train_dir)
    rng = random.Random(seed)
    chosen: dict[str, list[Path]] = {}
    for index, name in enumerate(CLASS_NAMES):
        files = [Path(p) for p, label in zip(paths, labels) if label == index]
        share = count // len(CLASS_NAMES) + (1 if index < count % len(CLASS_NAMES) else 0)
        if share > len(files):
            raise SystemExit(f"{train_dir}/{name}: {len(files)} photos, {share} needed")
        chosen[name] = sorted(rng.sample(files, share))
    return chosen


@contextlib.contextmanager
def subset_folder(photos: dict[str, list[Path]]) -> Iterator[Path]:
    """A temporary ``<class>/<photo>`` folder of symlinks, for ``make_dataset``."""
    with tempfile.TemporaryDirectory(prefix="catdog-bench-train-") as tmp:
        root = Path(tmp) / "train"
        for name, files in photos.items():
            (root / name).mkdir(parents=True)
            for path in files:
                (root / name / path.name).symlink_to(path.resolve())
        yield root


# --------------------------------------------------------------------------- measurements


def measure_pipeline(
    folder: Path, image_size: tuple[int, int], batch_size: int, seed: int
) -> tuple[dict[str, Any], Batch]:
    """Two passes over the real pipeline (decode, then cache); also returns one real batch."""
    from training.data import make_dataset

    ds = make_dataset(folder, image_size, batch_size, shuffle=True, seed=seed, cache=True)
    result: dict[str, Any] = {"image_size": list(image_size)}
    batch = None
    for name in ("decode", "cached"):
        images = 0
        first_batch_s = None
        started = time.perf_counter()
        for x, y in ds:
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - started
            if batch is None:
                batch = (x, y)  # a reference only; converted after timing
            images += int(x.shape[0])
        seconds = time.perf_counter() - started
        result[name] = {
            "images": images,
            "seconds": round(seconds, 3),
            "first_batch_s": round(first_batch_s or 0.0, 3),
            "img_s": round(images / seconds, 1),
        }
    assert batch is not None
    x, y = batch[0].numpy(), batch[1].numpy()
    del ds, batch
    gc.collect()
    return result, (x, y)


def epoch_clock() -> keras.callbacks.Callback:
    """A callback recording, per epoch, its wall time and when its first step ended."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._begin = time.perf_counter()
            self._first: float | None = None

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self._first is None:
                self._first = time.perf_counter() - self._begin

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds = time.perf_counter() - self._begin
            self.epochs.append({"seconds": seconds, "first_step_s": self._first or seconds})

    return EpochClock()


def in_memory_dataset(batch: Batch) -> tf.data.Dataset:
    """One batch repeated forever, with the same element spec as ``make_dataset``.

    Same spec (batch dimension None, float32 images and one-hot labels) means the
    train function traced here is reused by the real pipeline: no retrace there.
    """
    import tensorflow as tf

    x, y = batch
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)).cache().repeat()


def measure_in_memory(
    model: keras.Model, batch: Batch, warmup_steps: int, steps: int
) -> dict[str, Any]:
    """Warm-up steps (trace included), then ``steps`` timed steps on one in-memory batch."""
    ds = in_memory_dataset(batch)
    started = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=warmup_steps, shuffle=False, verbose=0)
    warmup_s = time.perf_counter() - started
    clock = epoch_clock()  # times the epoch itself, without fit()'s own setup
    model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[clock], shuffle=False, verbose=0)
    seconds = clock.epochs[0]["seconds"]
    images = steps * len(batch[0])
    return {
        "warmup_s": round(warmup_s, 3),
        "steps": steps,
        "seconds": round(seconds, 3),
        "img_s": round(images / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 1),
    }


def measure_real(
    model: keras.Model, ds: tf.data.Dataset, epochs: int, batch_size: int
) -> list[dict[str, Any]]:
    """``epochs`` epochs of ``model.fit`` on the real pipeline, as ``training.train`` calls it."""
    steps = int(ds.cardinality())
    clock = epoch_clock()
    # shuffle=False only silences Keras' warning: a tf.data.Dataset is never reshuffled by fit().
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=[clock], shuffle=False, verbose=0)
    images = steps * batch_size
    return [
        {
            "images": images,
            "seconds": round(e["seconds"], 3),
            "first_step_s": round(e["first_step_s"], 3),
            "img_s": round(images / e["seconds"], 1),
            "ms_per_step": round(1000 * e["seconds"] / steps, 1),
        }
        for e in clock.epochs
    ]


def describe(measured: dict[str, Any]) -> str:
    """A measurement on one console line."""
    keys = ("ms_per_step", "first_batch_s", "first_step_s", "warmup_s")
    parts = [f"{measured['img_s']:8.1f} img/s", f"{measured['seconds']:7.2f} s"]
    return "  ".join(parts + [f"{k}={measured[k]}" for k in keys if k in measured])
