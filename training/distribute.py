"""How a training run spreads over devices and workers.

``--strategy``: ``auto`` mirrors over several local GPUs or uses the default
(one device); ``mirrored`` and ``multiworker`` ask for one. In a multi-worker
cluster (``TF_CONFIG``, as the Kubernetes operator injects it) every worker
trains and saves, and only the chief owns the run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` copes with how Keras 3 calls it.

    With several workers, Keras 3.15's TensorFlow trainer fails in two places
    (keras-team/keras#20585): it reduces a whole ``(x, y)`` batch at once before
    the first step, and it reduces the scalar step metrics with ``axis=0``.
    Reducing leaf by leaf, and scalars across replicas only, fixes both.
    """

    def reduce(self, reduce_op: Any, value: Any, axis: int | None = None) -> Any:
        parent = super().reduce

        def reduce_one(v: Any) -> Any:
            scalar = self.experimental_local_results(v)[0].shape.rank == 0
            return parent(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(reduce_one, value)


def get_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: mirrored over several local GPUs, else the default (one device)."""
    if name == "multiworker":
        return MultiWorkerStrategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    if name in ("auto", "default"):
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


def worker_dir(run: Path) -> tuple[Path, bool]:
    """Where this process writes: the run folder for the chief, a sub-folder for other workers.

    In a multi-worker cluster (``TF_CONFIG``) every worker saves, but only the
    chief (task ``chief``, or ``worker`` 0 when there is no chief) owns the run folder.
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    chief = kind in (None, "chief") or (
        kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})
    )
    return (run if chief else run / f".{kind}-{index}"), chief
