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

The measurements are in ``bench.train_measure``, the rows and the markdown in
``bench.train_report``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import loadavg, new_report, write_report
from bench.train_measure import (
    Batch,
    describe,
    measure_in_memory,
    measure_pipeline,
    measure_real,
    sample_training_photos,
    subset_folder,
)
from bench.train_report import make_row, render_markdown

SCRATCH_SIZE = 128  # the size scratch is trained at; every other architecture uses 224
DEFAULT_SIZE = 224


def image_size_for(architecture: str, override: int | None) -> tuple[int, int]:
    """``--image-size`` if given, else 128 px for scratch and 224 px for everything else."""
    side = override or (SCRATCH_SIZE if architecture == "scratch" else DEFAULT_SIZE)
    return side, side


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


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from training.data import list_images

    args.epoch_images = len(list_images(args.data / "train")[0])
    report = new_report("bench.train", argv, tensorflow=tf.__version__, keras=keras.__version__)
    report["settings"] = {k: v for k, v in vars(args).items()}
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
    write_report(report, render_markdown(report), args.out)


if __name__ == "__main__":
    main()
