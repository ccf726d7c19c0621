"""Training benchmark: images/s of the input pipeline, of the model alone, and of both together.

For every architecture (``--archs``) this measures, on N photos taken
reproducibly from ``<data>/train`` (half cats, half dogs; symlinked into a
temporary split folder so the project's own ``training.data.make_dataset``
reads them, exactly as in training):

1. **Input pipeline alone** (no model): two passes over
   ``make_dataset(shuffle=True, cache=True)``. Pass 1 decodes every JPEG
   (PIL through ``catdog.preprocessing.load_image``) and fills the in-memory
   uint8 cache; pass 2 reads the cache. The pipeline depends only on the image
   size, so it is measured once per size and repeated in each row of that size.
2. **In-memory training**: one real batch held as float32 tensors (cached
   ``tf.data`` element, repeated), ``--warmup-steps`` steps untimed (they
   trace the train function), then ``--steps`` timed steps. This is the
   model's compute ceiling on this machine.
3. **Real-pipeline training**: ``model.fit`` on a fresh ``make_dataset`` of the
   N photos, two epochs in one call with ``steps_per_epoch`` set, as
   ``training.train`` does: epoch 1 decodes (cold cache), epoch 2 reads the
   cache. Each epoch is timed whole (epoch begin to end, no validation).

Models come from ``training.models.make_model`` and are compiled with
``training.train.compile_model`` (Adam, categorical cross-entropy, accuracy)
at ``TrainConfig``'s default learning rates; no mixed precision, no XLA. For
``transfer`` the ``head`` phase (frozen backbone) is measured, then the
backbone is unfrozen and recompiled as ``training.train`` does and the
``fine-tune`` phase is measured in memory and on one more (cached) epoch.

Definitions used in the tables:

* ``img/s``: images processed / wall seconds; ``ms/step``: per batch.
* ``decode``, ``cached``: pipeline pass 1 and pass 2 (input pipeline only).
* ``in-memory``: the timed steps of measurement 2.
* ``cold``, ``cached`` (real): epoch 1 and epoch 2 of measurement 3. The
  shuffle buffer holds the whole split, so the first batch of an epoch waits
  until every image is decoded (cold) or copied from the cache (cached):
  decoding does not overlap with training. ``1st step s`` is that wait plus
  the first step.
* ``real ÷ in-memory``: real cached img/s / in-memory img/s (what the input
  pipeline costs once the cache is warm).
* ``s/epoch``: seconds per epoch of the whole ``<data>/train`` split (20,000
  photos here), extrapolated linearly from the measured epochs.

JPEG files may already sit in the OS page cache (nothing drops it), so
``decode`` is decode-bound, not disk-bound. Thread counts are TensorFlow's
defaults; anything else running on the machine lowers every number, so note
the load averages in the report.

Usage::

    .venv/bin/python -m bench.train --archs article-1,article-2,article-3,scratch,transfer \\
        --images 2048 --steps 20 --out bench/results/train.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.serve import cell, loadavg

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_SIZE = 128  # the size scratch is trained at; every other architecture uses 224
DEFAULT_SIZE = 224
Batch = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- per architecture


def image_size_for(architecture: str, override: int | None) -> tuple[int, int]:
    """``--image-size`` if given, else 128 px for scratch and 224 px for everything else."""
    side = override or (SCRATCH_SIZE if architecture == "scratch" else DEFAULT_SIZE)
    return side, side


def count_params(weights: Sequence[Any]) -> int:
    """Number of scalars in a list of variables."""
    return int(sum(math.prod(w.shape) for w in weights))


def make_row(
    architecture: str,
    phase: str,
    model: keras.Model,
    pipeline: dict[str, Any],
    in_memory: dict[str, Any],
    cold: dict[str, Any] | None,
    cached: dict[str, Any],
    epoch_images: int,
    load: list[float],
) -> dict[str, Any]:
    """One table row: the measurements and the ratios derived from them."""
    row: dict[str, Any] = {
        "architecture": architecture,
        "phase": phase,
        "image_px": pipeline["image_size"][0],
        "params": model.count_params(),
        "trainable": count_params(model.trainable_weights),
        "pipeline_decode_img_s": pipeline["decode"]["img_s"],
        "pipeline_cached_img_s": pipeline["cached"]["img_s"],
        "in_memory_img_s": in_memory["img_s"],
        "in_memory_ms_step": in_memory["ms_per_step"],
        "warmup_s": in_memory["warmup_s"],
        "real_cold_img_s": cold["img_s"] if cold else None,
        "real_cold_first_step_s": cold["first_step_s"] if cold else None,
        "real_cached_img_s": cached["img_s"],
        "real_cached_ms_step": cached["ms_per_step"],
        "real_cached_first_step_s": cached["first_step_s"],
        "loadavg_1m": load[0],
        "measurements": {"in_memory": in_memory, "real_cold": cold, "real_cached": cached},
    }
    row["real_vs_in_memory"] = f"{cached['img_s'] / in_memory['img_s']:.0%}"
    row["cold_vs_cached"] = f"{cold['img_s'] / cached['img_s']:.0%}" if cold else None
    row["epoch_cold_s"] = round(epoch_images / cold["img_s"]) if cold else None
    row["epoch_cached_s"] = round(epoch_images / cached["img_s"])
    return row


def bench_architecture(
    architecture: str,
    folder: Path,
    pipeline: dict[str, Any],
    batch: Batch,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every measurement for one architecture: one row, or two (head, fine-tune) for transfer."""
    import keras

    from catdog.contract import CLASS_NAMES
    from training.data import make_dataset
    from training.models import make_model
    from training.train import TrainConfig, compile_model

    size = tuple(pipeline["image_size"])
    load = loadavg()
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    model = make_model(
        architecture,
        (*size, 3),
        len(CLASS_NAMES),
        backbone=args.backbone,
        weights=args.weights,
        seed=args.seed,
    )
    config = TrainConfig(
        data_dir=str(args.data),
        run_dir="",
        architecture=architecture,
        batch_size=args.batch_size,
        image_size=size,
        seed=args.seed,
        backbone=args.backbone,
        weights=args.weights,
    )
    compile_model(model, config, config.learning_rate)
    phase = "head" if architecture == "transfer" else "train"
    print(f"[{architecture} {phase}] {size[0]} px, {model.count_params():,} parameters", flush=True)

    in_memory = measure_in_memory(model, batch, args.warmup_steps, args.steps)
    print(f"  in-memory: {describe(in_memory)}", flush=True)
    ds = make_dataset(folder, size, args.batch_size, shuffle=True, seed=args.seed, cache=True)
    cold, cached = measure_real(model, ds, 2, args.batch_size)
    print(f"  real, epoch 1 (cold): {describe(cold)}", flush=True)
    print(f"  real, epoch 2 (cached): {describe(cached)}", flush=True)
    rows = [
        make_row(
            architecture, phase, model, pipeline, in_memory, cold, cached, args.epoch_images, load
        )
    ]

    if architecture == "transfer" and args.fine_tune:
        load = loadavg()
        for layer in model.layers:  # as training.train does before fine-tuning
            layer.trainable = True
        compile_model(model, config, config.fine_tune_learning_rate)
        print(f"[{architecture} fine-tune] backbone unfrozen", flush=True)
        in_memory = measure_in_memory(model, batch, args.warmup_steps, args.steps)
        print(f"  in-memory: {describe(in_memory)}", flush=True)
        (cached,) = measure_real(model, ds, 1, args.batch_size)
        print(f"  real, cached epoch: {describe(cached)}", flush=True)
        rows.append(
            make_row(
                architecture,
                "fine-tune",
                model,
                pipeline,
                in_memory,
                None,
                cached,
                args.epoch_images,
                load,
            )
        )
    del model, ds
    gc.collect()
    return rows


def describe(measured: dict[str, Any]) -> str:
    """A measurement on one console line."""
    keys = ("ms_per_step", "first_batch_s", "first_step_s", "warmup_s")
    parts = [f"{measured['img_s']:8.1f} img/s", f"{measured['seconds']:7.2f} s"]
    return "  ".join(parts + [f"{k}={measured[k]}" for k in keys if k in measured])


# --------------------------------------------------------------------------- report

COLUMNS = [
    ("architecture", "architecture"),
    ("phase", "phase"),
    ("px", "image_px"),
    ("params", "params"),
    ("trainable", "trainable"),
    ("pipeline decode img/s", "pipeline_decode_img_s"),
    ("pipeline cached img/s", "pipeline_cached_img_s"),
    ("in-memory img/s", "in_memory_img_s"),
    ("in-memory ms/step", "in_memory_ms_step"),
    ("real cold img/s", "real_cold_img_s"),
    ("real cached img/s", "real_cached_img_s"),
    ("real cached ms/step", "real_cached_ms_step"),
]
DERIVED_COLUMNS = [
    ("architecture", "architecture"),
    ("phase", "phase"),
    ("real ÷ in-memory", "real_vs_in_memory"),
    ("cold ÷ cached", "cold_vs_cached"),
    ("1st step s (cold)", "real_cold_first_step_s"),
    ("1st step s (cached)", "real_cached_first_step_s"),
    ("warm-up s", "warmup_s"),
    ("s/epoch cold", "epoch_cold_s"),
    ("s/epoch cached", "epoch_cached_s"),
    ("load 1 min", "loadavg_1m"),
]
TEXT_KEYS = {"architecture", "phase"}


def table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table: text columns left-aligned, numbers right-aligned."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if k in TEXT_KEYS else "---:" for _, k in columns) + "|")
    lines += ["| " + " | ".join(number(r.get(k)) for _, k in columns) + " |" for r in rows]
    return lines


def number(value: Any) -> str:
    """A table cell, with thousands separators for integers."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else cell(value)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown."""
    env, s = report["environment"], report["settings"]
    pipelines = "; ".join(
        f"{p['image_size'][0]} px: decode {p['decode']['img_s']} img/s "
        f"(first batch after {p['decode']['first_batch_s']} s), cached {p['cached']['img_s']} "
        f"img/s (first batch after {p['cached']['first_batch_s']} s)"
        for p in report["pipelines"]
    )
    lines = [
        "# Training benchmark",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"{report['started']}; {env['cpus']} CPUs, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, default thread counts; load average at start "
        f"{env['loadavg_start']}, at end {env.get('loadavg_end')}. "
        f"{s['images']} training photos (half cats, half dogs, seed {s['seed']}), "
        f"batch {s['batch_size']}; in memory: {s['warmup_steps']} warm-up + {s['steps']} timed "
        f"steps; real pipeline: 2 epochs (epoch 1 decodes, epoch 2 reads the cache)"
        + (
            f"; transfer: {s['backbone']} backbone, weights {s['weights']}."
            if "transfer" in s["archs"]
            else "."
        ),
        "",
        f"Input pipeline alone: {pipelines}.",
        "",
        "`make_dataset` as in training (PIL decode, in-memory uint8 cache, shuffle over the "
        "whole split, /255, one-hot, prefetch); models compiled by `compile_model` (Adam, "
        "categorical cross-entropy). `pipeline` = input pipeline alone, `in-memory` = one "
        "batch of tensors repeated (compute ceiling), `real` = `model.fit` on the pipeline "
        "(cold: epoch 1, cached: epoch 2; transfer fine-tune: one more cached epoch with the "
        "backbone unfrozen). See `bench/train.py` for details.",
        "",
        *table(report["rows"], COLUMNS),
        "",
        f"Derived: `real ÷ in-memory` = real cached img/s / in-memory img/s; `1st step s` = "
        f"wait for the shuffle buffer (whole split) plus the first step; `warm-up s` = "
        f"{s['warmup_steps']} in-memory warm-up step(s) including the trace; `s/epoch` = "
        f"{s['epoch_images']:,} training photos / real img/s (no validation).",
        "",
        *table(report["rows"], DERIVED_COLUMNS),
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    """The markdown at ``out``, the raw numbers as JSON beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    from training.models import ARCHITECTURES, BACKBONES

    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n")[0])
    p.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated")
    p.add_argument("--data", type=Path, default=Path("data/split"), help="prepared split folder")
    p.add_argument(
        "--images",
        type=int,
        default=2048,
        help="training photos used (rounded down to a multiple of the batch size)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed in-memory steps")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed in-memory steps, >= 1")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"side in px for every architecture (default {SCRATCH_SIZE} for scratch, "
        f"{DEFAULT_SIZE} otherwise)",
    )
    p.add_argument("--backbone", default="mobilenet", choices=sorted(BACKBONES))
    p.add_argument("--weights", default="imagenet", help="transfer backbone weights, or none")
    p.add_argument(
        "--fine-tune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure transfer with the backbone unfrozen",
    )
    p.add_argument("--seed", type=int, default=0, help="photo sample, shuffle and model seed")
    p.add_argument("--out", type=Path, default=Path("bench/results/train.md"))
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if unknown := [a for a in args.archs if a not in ARCHITECTURES]:
        p.error(f"unknown architectures {unknown}; choose from {list(ARCHITECTURES)}")
    if min(args.batch_size, args.steps, args.warmup_steps) < 1:
        p.error("--batch-size, --steps and --warmup-steps must be >= 1 (warm-up holds the trace)")
    args.images = max(args.batch_size, args.images // args.batch_size * args.batch_size)
    if args.weights.lower() == "none":
        args.weights = None
    if not (args.data / "train").is_dir():
        p.error(f"{args.data}/train: not a folder (run `python -m training prepare` first)")
    return args


def command_line(argv: Sequence[str]) -> str:
    """How this run was started, as one shell line."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else "python"
    return shlex.join([python, "-m", "bench.train", *argv])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from training.data import list_images

    args.epoch_images = len(list_images(args.data / "train")[0])
    report: dict[str, Any] = {
        "command": command_line(argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "loadavg_start": loadavg(),
        },
        "settings": {k: v for k, v in vars(args).items()},
    }
    print(report["command"], flush=True)
    photos = sample_training_photos(args.data / "train", args.images, args.seed)
    names = "\n".join(p.name for files in photos.values() for p in files)
    report["photos"] = {
        **{name: len(files) for name, files in photos.items()},
        "names_sha256": hashlib.sha256(names.encode()).hexdigest(),
    }
    pipelines: dict[tuple[int, int], tuple[dict[str, Any], Batch]] = {}
    rows: list[dict[str, Any]] = []
    with subset_folder(photos) as folder:
        for architecture in args.archs:
            size = image_size_for(architecture, args.image_size)
            if size not in pipelines:  # the pipeline depends on the image size only
                pipelines[size] = measure_pipeline(folder, size, args.batch_size, args.seed)
                p = pipelines[size][0]
                print(
                    f"[pipeline {size[0]} px] decode {describe(p['decode'])}\n"
                    f"                 cached {describe(p['cached'])}",
                    flush=True,
                )
            pipeline, batch = pipelines[size]
            rows += bench_architecture(architecture, folder, pipeline, batch, args)
    report["pipelines"] = [p for p, _ in pipelines.values()]
    report["rows"] = rows
    report["environment"]["loadavg_end"] = loadavg()
    write_report(report, args.out)
    print("\n" + render_markdown(report), flush=True)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
