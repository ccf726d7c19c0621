"""Train any architecture on a ``prepare``d split folder.

The story: load the splits, pick a distribution strategy, build and compile the
model, fit (with checkpoints, optional early stopping, resumable backups), then
for ``transfer`` unfreeze the backbone and fine-tune at a lower learning rate.
Everything a run produces lands in its run folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from catdog.contract import CLASS_NAMES, IMAGE_SIZE
from training.augment import RobustAugment
from training.data import load_splits
from training.distribute import get_strategy, worker_dir
from training.epochs import EpochState, EpochTimer, read_history
from training.models import copy_weights, make_model
from training.prepare import read_fingerprint
from training.visualize import save_history_plot

SCHEDULES = ("constant", "cosine", "warmup-cosine", "step")
BATCH_NORM = ("adapt", "frozen")  # while fine-tuning: trained with the rest, or ImageNet's
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
    image_size: tuple[int, int] = IMAGE_SIZE  # (height, width)
    seed: int = 42
    early_stopping: int = 0  # patience in epochs; 0 turns it off
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"
    mixed_precision: bool = False
    xla: bool = False
    backbone: str = "mobilenet"
    backbone_size: int = 0  # transfer: side the input is resized to for the backbone; 0: same
    batch_norm: str = "adapt"  # fine-tuning: "frozen" keeps ImageNet's batch norm (_unfreeze)
    weights: str | None = "imagenet"
    init_from: str = ""  # a checkpoint of the same layers whose weights start the run
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-4
    strategy: str = "auto"
    cache: bool | str = True
    steps_per_epoch: int | None = None
    augment: str = "basic"
    soft_labels: str = ""  # a teacher's soft-labels.npz (training.teacher): distillation
    distill_weight: float = 0.5  # the teacher's share of each training target
    extra: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class Phase:
    """One ``fit``: its name, epoch count and base learning rate."""

    name: str
    epochs: int
    learning_rate: float


@dataclass
class Session:
    """A training ready to run: built fresh or resumed from the last finished epoch."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    model: keras.Model
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    steps: int  # per epoch
    phases: list[Phase]
    state: dict[str, Any]  # {"phase": name, "epoch": epochs of that phase done}
    out: Path  # where this process writes (see ``worker_dir``)
    chief: bool
    replanned: dict[str, Any] | None = None  # the resumed phase's epoch count changed


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training; return and save the best validation metrics."""
    session = build_or_resume(config)
    run_phases(session)
    return record(session)


def plan_phases(config: TrainConfig) -> list[Phase]:
    """One phase; for ``transfer`` with fine-tune epochs, the head then the whole network."""
    if config.architecture == "transfer" and config.fine_tune_epochs > 0:
        return [
            Phase("head", config.epochs, config.learning_rate),
            Phase("fine-tune", config.fine_tune_epochs, config.fine_tune_learning_rate),
        ]
    return [Phase("train", config.epochs, config.learning_rate)]


def build_or_resume(config: TrainConfig) -> Session:
    """Strategy, data, and the model: built and compiled, or loaded from ``last.keras``.

    Also writes ``config.json`` (the settings plus what the run found: replicas,
    parameters, steps per epoch, the dataset's fingerprint, library versions).
    """
    # The strategy comes first: multi-worker collectives must exist before other TF ops.
    strategy = get_strategy(config.strategy)
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {config.augment!r}; choose from {AUGMENTATIONS}")
    out, chief = worker_dir(Path(config.run_dir))
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    train_ds, val_ds, steps = _datasets(config, strategy.num_replicas_in_sync)
    phases = plan_phases(config)

    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    replanned = None
    with strategy.scope():
        if state and (out / "last.keras").is_file():
            model = keras.saving.load_model(out / "last.keras")
            print(
                f"resuming {config.run_dir}: phase {state['phase']}, {state['epoch']} epoch(s) done"
            )
            replanned = _replanned(out, state, phases)
        else:
            state = {"phase": phases[0].name, "epoch": 0}
            model = make_model(
                config.architecture,
                (*config.image_size, 3),
                len(CLASS_NAMES),
                backbone=config.backbone,
                weights=config.weights,
                seed=config.seed,
                augmentation=config.augment == "basic",
                backbone_size=config.backbone_size,
            )
            if config.init_from:
                start_from(model, config.init_from)
            first = phases[0]
            compile_model(
                model,
                config,
                make_learning_rate(first.learning_rate, config.lr_schedule, steps * first.epochs),
            )
    model.summary(print_fn=lambda line, **_: print(line))
    meta = {
        **asdict(config),
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": config.batch_size * strategy.num_replicas_in_sync,
        "parameters": model.count_params(),
        "steps_per_epoch": steps,
        "dataset_fingerprint": read_fingerprint(config.data_dir),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    if replanned:
        meta["replanned"] = replanned
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Session(
        config, strategy, model, train_ds, val_ds, steps, phases, state, out, chief, replanned
    )


def start_from(model: keras.Model, checkpoint: str) -> None:
    """Give ``model`` the weights of ``checkpoint`` (the same layers; ValueError if not)."""
    copy_weights(keras.saving.load_model(checkpoint), model, checkpoint)
    print(f"weights from {checkpoint}")


def _replanned(out: Path, state: dict[str, Any], phases: list[Phase]) -> dict[str, Any] | None:
    """When a run resumes mid-phase with a new epoch count for that phase, say so.

    The resumed optimizer's schedule spans the count it was compiled for
    (``planned_epochs`` in ``state.json``; older runs: the last replan or the
    saved ``config.json``); ``run_phases`` then recompiles with a fresh schedule
    over the epochs that remain.
    """
    path = out / "config.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    name = state["phase"]
    earlier = previous.get("replanned")
    earlier = earlier if earlier and earlier["phase"] == name else None
    planned = state.get("planned_epochs")
    if planned is None and earlier:
        planned = earlier["epochs_now"]
    if planned is None and previous:
        planned = {p.name: p.epochs for p in plan_phases(_config_from(previous))}.get(name)
    now = {p.name: p.epochs for p in phases}.get(name)
    if planned is not None and now is not None and planned != now and state["epoch"] > 0:
        print(f"phase {name}: {now} epochs (was {planned}); new schedule from here")
        return {
            "phase": name,
            "epochs_before": planned,
            "epochs_now": now,
            "at_epoch": state["epoch"],
        }
    return earlier  # a later resume of a replanned phase keeps its record


def _config_from(saved: dict[str, Any]) -> TrainConfig:
    """The TrainConfig fields of a saved ``config.json``."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def _datasets(config: TrainConfig, replicas: int) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """Cached, shuffled (maybe augmented) training set, validation set, steps per epoch."""
    train_ds, val_ds = load_splits(
        config.data_dir,
        config.image_size,
        config.batch_size * replicas,
        config.seed,
        config.cache,
        augment=RobustAugment() if config.augment == "robust" else None,
        soft_labels=config.soft_labels or None,
        distill_weight=config.distill_weight,
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
    return train_ds, val_ds, steps


def run_phases(session: Session) -> None:
    """Fit each phase not yet finished, from where an interruption left it.

    Callbacks: the best checkpoint by validation accuracy (across resumes),
    epoch timing, optional early stopping, and the per-epoch state that makes
    the run resumable. Fine-tuning unfreezes the backbone and recompiles.
    """
    config, out, state = session.config, session.out, session.state
    done = read_history(out)
    best = keras.callbacks.ModelCheckpoint(
        str(out / "best.keras"),
        monitor="val_accuracy",
        save_best_only=True,
        verbose=1,
        initial_value_threshold=max((r["val_accuracy"] for r in done), default=None),
    )
    names = [phase.name for phase in session.phases]
    position = names.index(state["phase"]) if state["phase"] in names else 0
    offset = sum(phase.epochs for phase in session.phases[:position])
    for index, phase in enumerate(session.phases[position:], start=position):
        initial_epoch = state["epoch"] if index == position else 0
        if phase.name == "fine-tune" and initial_epoch == 0:
            _unfreeze(session, phase)
        elif (
            session.replanned
            and session.replanned["at_epoch"] == initial_epoch
            and session.replanned["phase"] == phase.name
        ):
            # A fresh schedule over the remaining epochs (the optimizer starts anew).
            _compile_for(session, phase, phase.epochs - initial_epoch)
        callbacks: list[keras.callbacks.Callback] = [EpochTimer(), best]
        if config.early_stopping:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_accuracy",
                    patience=config.early_stopping,
                    restore_best_weights=True,
                )
            )
        callbacks.append(EpochState(out, phase.name, offset, planned=phase.epochs))
        if initial_epoch < phase.epochs:
            session.model.fit(
                session.train_ds,
                validation_data=session.val_ds,
                epochs=phase.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=session.steps,
                callbacks=callbacks,
                verbose="auto",
            )
        offset += phase.epochs


def _unfreeze(session: Session, phase: Phase) -> None:
    """Unfreeze the model (``unfreeze``) and recompile at the phase's (lower) learning rate."""
    with session.strategy.scope():
        unfreeze(session.model, session.config.batch_norm)
    _compile_for(session, phase, phase.epochs)


def unfreeze(model: keras.Model, batch_norm: str = "adapt") -> None:
    """Make every layer trainable; with ``batch_norm="frozen"`` every batch norm, nested
    ones too, stays non-trainable, which in Keras 3 also runs it in inference mode
    (ImageNet's statistics). A ``training=False`` in the graph would not do it: the
    functional model passes fit's ``training=True`` over it.
    """
    if batch_norm not in BATCH_NORM:
        raise ValueError(f"unknown batch norm {batch_norm!r}; choose from {BATCH_NORM}")
    for layer in model.layers:
        layer.trainable = True
    if batch_norm == "frozen":
        for layer in model._flatten_layers():  # noqa: SLF001  # the backbone's too
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def _compile_for(session: Session, phase: Phase, epochs: int) -> None:
    """Compile with the phase's learning rate, scheduled over ``epochs`` epochs."""
    with session.strategy.scope():
        compile_model(
            session.model,
            session.config,
            make_learning_rate(
                phase.learning_rate, session.config.lr_schedule, session.steps * epochs
            ),
        )


def record(session: Session) -> dict[str, Any]:
    """Write the history across phases and resumes, its plot, ``final.keras`` and the result."""
    out = session.out
    rows = read_history(out)
    keys = [k for k in rows[0] if k not in ("phase", "epoch", "global_epoch")]
    history: dict[str, list] = {k: [r.get(k) for r in rows] for k in keys}
    history["phase"] = [r["phase"] for r in rows]
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    session.model.save(out / "final.keras")
    best_row = max(rows, key=lambda r: r["val_accuracy"])
    result = {
        "best_epoch": best_row["global_epoch"],
        "val_accuracy": best_row["val_accuracy"],
        "val_loss": best_row["val_loss"],
        "mean_epoch_seconds": sum(history["epoch_seconds"]) / len(rows),
        "epochs_run": len(rows),
        "checkpoint": str(out / "best.keras"),
        "chief": session.chief,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if session.chief:
        save_history_plot(history, out / "history.png")
    return result
