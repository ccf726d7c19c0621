"""Train any architecture on a ``prepare``d split folder.

The story: load the splits, pick a distribution strategy, build and compile the
model, fit (with checkpoints, optional early stopping, resumable backups), then
for ``transfer`` unfreeze the backbone and fine-tune at a lower learning rate.
Everything a run produces lands in its run folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from catdog.contract import CLASS_NAMES
from training.augment import RobustAugment
from training.data import load_splits
from training.models import make_model
from training.prepare import read_fingerprint
from training.visualize import save_history_plot

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
SCHEDULES = ("constant", "cosine", "warmup-cosine", "step")
AUGMENTATIONS = ("basic", "robust")  # in-model flips/rotation/zoom, or training.augment


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    data_dir: str
    run_dir: str
    architecture: str = "article-3"
    epochs: int = 10
    batch_size: int = 64  # per replica; the global batch scales with the replicas
    learning_rate: float = 1e-3
    image_size: tuple[int, int] = (224, 224)
    seed: int = 42
    early_stopping: int = 0  # patience in epochs; 0 turns it off
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"
    mixed_precision: bool = False
    xla: bool = False
    backbone: str = "mobilenet"
    weights: str | None = "imagenet"
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-4
    strategy: str = "auto"
    cache: bool | str = True
    steps_per_epoch: int | None = None
    augment: str = "basic"
    extra: dict[str, Any] = field(default_factory=dict)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of each epoch, validation included) to the logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


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


def make_learning_rate(
    base: float, schedule: str, steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, a cosine decay over ``steps`` (after a linear warm-up over
    the first tenth for ``warmup-cosine``), or ×0.1 steps at 1/3 and 2/3."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=max(1, steps))
    if schedule == "warmup-cosine":
        warmup = max(1, steps // 10)
        return keras.optimizers.schedules.CosineDecay(
            base / 10,
            decay_steps=max(1, steps - warmup),
            warmup_target=base,
            warmup_steps=warmup,
        )
    if schedule == "step":
        bounds = [max(1, steps // 3), max(2, 2 * steps // 3)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [base, base * 0.1, base * 0.01]
        )
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def compile_model(model: keras.Model, config: TrainConfig, learning_rate: Any) -> None:
    """Adam, categorical cross-entropy (optionally label-smoothed), accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        jit_compile=config.xla,
    )


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


class EpochState(keras.callbacks.Callback):
    """After every epoch: save the full model (optimizer included) and log the epoch.

    ``last.keras`` + ``state.json`` make a run resumable; ``history.jsonl`` keeps
    one line per finished epoch across interruptions.
    """

    def __init__(self, out: Path, phase: str, epoch_offset: int = 0) -> None:
        super().__init__()
        self.out, self.phase, self.epoch_offset = out, phase, epoch_offset

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Log first, then the model, then the state: a kill between any two steps
        # at worst repeats this epoch on resume (and its log line is replaced).
        row = {
            "phase": self.phase,
            "epoch": epoch + 1,
            "global_epoch": self.epoch_offset + epoch + 1,
            **{k: float(v) for k, v in (logs or {}).items()},
        }
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        staging = self.out / "last.tmp.keras"
        self.model.save(staging)
        staging.replace(self.out / "last.keras")
        state = self.out / "state.tmp.json"
        state.write_text(json.dumps({"phase": self.phase, "epoch": epoch + 1}) + "\n")
        state.replace(self.out / "state.json")


def read_history(out: Path) -> list[dict[str, Any]]:
    """Finished epochs in order, the last record winning if an epoch was logged twice."""
    path = out / "history.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["global_epoch"]] = row
    return [rows[k] for k in sorted(rows)]


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training; return and save the best validation metrics."""
    # The strategy comes first: multi-worker collectives must exist before other TF ops.
    strategy = get_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    run = Path(config.run_dir)
    out, chief = worker_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    # Load: cached, shuffled training set and the validation set.
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {config.augment!r}; choose from {AUGMENTATIONS}")
    train_ds, val_ds = load_splits(
        config.data_dir,
        config.image_size,
        global_batch,
        config.seed,
        config.cache,
        augment=RobustAugment() if config.augment == "robust" else None,
    )
    steps = config.steps_per_epoch or int(train_ds.cardinality())
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()
    if replicas > 1:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)

    # The phases: train (for transfer: the head), then optionally fine-tune the backbone.
    phases = [("train", config.epochs, config.learning_rate)]
    if config.architecture == "transfer" and config.fine_tune_epochs > 0:
        phases = [
            ("head", config.epochs, config.learning_rate),
            ("fine-tune", config.fine_tune_epochs, config.fine_tune_learning_rate),
        ]

    # Build and compile under the strategy, or resume from the last finished epoch.
    state = json.loads((out / "state.json").read_text()) if (out / "state.json").is_file() else None
    with strategy.scope():
        if state and (out / "last.keras").is_file():
            model = keras.saving.load_model(out / "last.keras")
            print(f"resuming {run}: phase {state['phase']}, {state['epoch']} epoch(s) done")
        else:
            state = {"phase": phases[0][0], "epoch": 0}
            model = make_model(
                config.architecture,
                (*config.image_size, 3),
                len(CLASS_NAMES),
                backbone=config.backbone,
                weights=config.weights,
                seed=config.seed,
                augmentation=config.augment == "basic",
            )
            compile_model(
                model,
                config,
                make_learning_rate(config.learning_rate, config.lr_schedule, steps * config.epochs),
            )
    model.summary(print_fn=lambda line, **_: print(line))
    meta = {
        **asdict(config),
        "replicas": replicas,
        "global_batch_size": global_batch,
        "parameters": model.count_params(),
        "steps_per_epoch": steps,
        "dataset_fingerprint": read_fingerprint(config.data_dir),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    # Fit each phase: best checkpoint by validation accuracy (across resumes), timing, state.
    done = read_history(out)
    best = keras.callbacks.ModelCheckpoint(
        str(out / "best.keras"),
        monitor="val_accuracy",
        save_best_only=True,
        verbose=1,
        initial_value_threshold=max((r["val_accuracy"] for r in done), default=None),
    )
    names = [name for name, _, _ in phases]
    offset = 0
    for index, (phase, epochs, learning_rate) in enumerate(phases):
        position = names.index(state["phase"]) if state["phase"] in names else 0
        if index < position:
            offset += epochs
            continue  # finished before an interruption
        initial_epoch = state["epoch"] if index == position else 0
        if phase == "fine-tune" and not (index == position and initial_epoch > 0):
            with strategy.scope():  # unfreeze the backbone, lower the learning rate
                for layer in model.layers:
                    layer.trainable = True
                compile_model(
                    model,
                    config,
                    make_learning_rate(learning_rate, config.lr_schedule, steps * epochs),
                )
        callbacks: list[keras.callbacks.Callback] = [EpochTimer(), best]
        if config.early_stopping:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_accuracy",
                    patience=config.early_stopping,
                    restore_best_weights=True,
                )
            )
        callbacks.append(EpochState(out, phase, offset))
        if initial_epoch < epochs:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                callbacks=callbacks,
                verbose="auto",
            )
        offset += epochs

    # Record: the history across phases and resumes, its plot, the best epoch.
    rows = read_history(out)
    keys = [k for k in rows[0] if k not in ("phase", "epoch", "global_epoch")]
    history: dict[str, list] = {k: [r.get(k) for r in rows] for k in keys}
    history["phase"] = [r["phase"] for r in rows]
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    model.save(out / "final.keras")
    best_row = max(rows, key=lambda r: r["val_accuracy"])
    result = {
        "best_epoch": best_row["global_epoch"],
        "val_accuracy": best_row["val_accuracy"],
        "val_loss": best_row["val_loss"],
        "mean_epoch_seconds": sum(history["epoch_seconds"]) / len(rows),
        "epochs_run": len(rows),
        "checkpoint": str(out / "best.keras"),
        "chief": chief,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if chief:
        save_history_plot(history, out / "history.png")
    return result
