"""Train any architecture on a ``prepare``d split folder.

The story: load the splits, pick a distribution strategy, build and compile the
model, fit (with checkpoints, optional early stopping, resumable backups), then
for ``transfer`` unfreeze the backbone and fine-tune at a lower learning rate.
Everything a run produces lands in its run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training.contract import CLASS_NAMES
from training.data import load_splits
from training.models import make_model
from training.prepare import read_fingerprint
from training.visualize import save_history_plot

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
SCHEDULES = ("constant", "cosine", "step")


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
    extra: dict[str, Any] = field(default_factory=dict)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of each epoch, validation included) to the logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


def get_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: mirrored over several local GPUs, else the default (one device)."""
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    if name in ("auto", "default"):
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


def make_learning_rate(
    base: float, schedule: str, steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, a cosine decay over ``steps``, or ×0.1 steps at 1/3 and 2/3."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=max(1, steps))
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


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training; return (and save) the history and the best validation metrics."""
    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = get_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas

    # Load: cached, shuffled training set and the validation set.
    train_ds, val_ds = load_splits(config.data_dir, config.image_size, global_batch,
                                   config.seed, config.cache)
    steps = config.steps_per_epoch or int(train_ds.cardinality())
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()

    # Build and compile under the strategy.
    input_shape = (*config.image_size, 3)
    with strategy.scope():
        model = make_model(config.architecture, input_shape, len(CLASS_NAMES),
                           backbone=config.backbone, weights=config.weights, seed=config.seed)
        compile_model(model, config,
                      make_learning_rate(config.learning_rate, config.lr_schedule,
                                         steps * config.epochs))
    model.summary(print_fn=lambda line, **_: print(line))
    meta = {**asdict(config), "replicas": replicas, "global_batch_size": global_batch,
            "parameters": model.count_params(), "steps_per_epoch": steps,
            "dataset_fingerprint": read_fingerprint(config.data_dir),
            "tensorflow": tf.__version__, "keras": keras.__version__}
    (run / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    # Fit: best checkpoint by validation accuracy, resumable backups, timing.
    best = keras.callbacks.ModelCheckpoint(str(run / "best.keras"), monitor="val_accuracy",
                                           save_best_only=True, verbose=1)
    callbacks: list[keras.callbacks.Callback] = [EpochTimer(), best]
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=config.early_stopping, restore_best_weights=True))
    history = _fit(model, train_ds, val_ds, config.epochs, steps,
                   [*callbacks, keras.callbacks.BackupAndRestore(str(run / "backup" / "head"))])

    # Transfer learning, second phase: unfreeze the backbone, lower the learning rate.
    if config.architecture == "transfer" and config.fine_tune_epochs > 0:
        with strategy.scope():
            for layer in model.layers:
                layer.trainable = True
            compile_model(model, config,
                          make_learning_rate(config.fine_tune_learning_rate, config.lr_schedule,
                                             steps * config.fine_tune_epochs))
        fine = _fit(model, train_ds, val_ds, config.fine_tune_epochs, steps,
                    [*callbacks, keras.callbacks.BackupAndRestore(str(run / "backup" / "fine"))])
        history = {k: history.get(k, []) + fine.get(k, []) for k in {*history, *fine}}
        history["phase"] = ["head"] * config.epochs + ["fine-tune"] * config.fine_tune_epochs

    (run / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    save_history_plot(history, run / "history.png")
    best_epoch = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
    result = {
        "best_epoch": best_epoch + 1,
        "val_accuracy": history["val_accuracy"][best_epoch],
        "val_loss": history["val_loss"][best_epoch],
        "mean_epoch_seconds": sum(history["epoch_seconds"]) / len(history["epoch_seconds"]),
        "checkpoint": str(run / "best.keras"),
    }
    (run / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fit(model: keras.Model, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, epochs: int,
         steps: int, callbacks: list[keras.callbacks.Callback]) -> dict[str, list[float]]:
    fitted = model.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps,
                       callbacks=callbacks, verbose="auto")
    return {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
