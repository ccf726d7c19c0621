"""Command line: ``python -m training <command>`` (run with ``--help`` for each command)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from catdog.contract import IMAGE_SIZE
from catdog.quiet import drop_expected_gpu_noise

PHOTOS_HELP = "labelled photos: cat/ and dog/ folders (a split), Cat/ and Dog/, or cat.N.jpg files"


def _size(text: str) -> tuple[int, int]:
    """``224`` or ``224x160`` (height x width)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"bad image size {text!r}; use 224 or 224x160")
    return parts[0], parts[1]


def _ratios(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three ratios, e.g. 0.8,0.1,0.1")
    return parts[0], parts[1], parts[2]


def cmd_prepare(args: argparse.Namespace) -> int:
    from training.prepare import format_summary, prepare

    manifest = prepare(args.source, args.dest, args.split, args.seed, args.force)
    print(format_summary(manifest))
    print(f"manifest: {Path(args.dest) / 'manifest.json'}")
    return 0


def cmd_show_batch(args: argparse.Namespace) -> int:
    from training.data import make_dataset
    from training.visualize import save_batch_grid

    ds = make_dataset(
        Path(args.data) / args.split,
        args.image_size,
        args.batch_size,
        shuffle=True,
        seed=args.seed,
        cache=False,
    )
    images, labels = next(iter(ds))
    print(
        f"batch: images {tuple(images.shape)} {images.dtype.name} "
        f"range [{float(images.numpy().min()):.3f}, {float(images.numpy().max()):.3f}], "
        f"labels {tuple(labels.shape)} (one-hot {ds.class_names})"
    )
    print(f"wrote {save_batch_grid(images.numpy(), labels.numpy(), ds.class_names, args.out)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, train

    # Every other option's dest is a TrainConfig field of the same name.
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    config = TrainConfig(**values, cache=False if args.no_cache else (args.cache_file or True))
    print(json.dumps(train(config), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, format_report

    report = evaluate(
        args.model,
        args.data,
        batch_size=args.batch_size,
        out_dir=args.out,
        backbone_size=args.backbone_size,
        tta=args.tta,
    )
    print(format_report(report))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from training.robustness import TRANSFORMS, format_table, run_suite, save_results

    results = {}
    for path in args.include or []:  # earlier runs' robustness.json, shown first
        results.update(json.loads(Path(path).read_text()))
    for model in args.model:
        name = Path(model).name
        label = f"v{name}" if name.isdigit() else Path(model).stem
        results[label] = run_suite(
            model, args.data, args.transform or tuple(TRANSFORMS), args.limit
        )
    print(format_table(results))
    for label, suite in results.items():
        skipped = next(iter(suite.values())).get("skipped") or []
        if skipped:
            print(f"{label}: left out {len(skipped)} files that do not decode (robustness.json)")
    for path in save_results(results, args.out):
        print(f"wrote {path}")
    return 0


def cmd_neither(args: argparse.Namespace) -> int:
    from training.neither import (
        check,
        folder_images,
        format_report,
        package_samples,
        save_report,
        synthetic,
    )

    categories = synthetic(args.count, args.seed)
    categories["package samples"] = package_samples()
    for folder in args.extra or []:
        categories[Path(folder).name] = folder_images(folder)
    report = check(args.model, args.data, categories, args.photo_limit)
    print(format_report(report))
    for path in save_report(report, args.out):
        print(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from training.predict import predict_paths

    for line in predict_paths(args.model, args.path):
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_run

    path = export_run(
        args.run,
        args.out,
        version=args.version,
        data_dir=args.data,
        checkpoint=args.checkpoint,
        tta=args.tta,
        ood=args.ood,
        ood_limit=args.ood_limit,
        backbone_size=args.backbone_size,
    )
    print(f"exported {path}")
    return 0


def cmd_litert(args: argparse.Namespace) -> int:
    from training.litert import add_litert_from_data, format_record

    print(format_record(*add_litert_from_data(args.version_dir, args.data, args.limit)))
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from training.teacher import run_teacher

    report = run_teacher(
        args.data,
        args.out,
        args.weights,
        l2=args.l2,
        limit=args.limit,
        int8=args.int8,
        robust_copies=args.robust_copies,
    )
    print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m training`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="split a raw Kaggle folder into train/validation/test")
    p.add_argument("--source", required=True, help="folder of cat.N.jpg/dog.N.jpg, or of Cat/ Dog/")
    p.add_argument("--dest", required=True, help="output folder (<split>/<class>/...)")
    p.add_argument("--split", type=_ratios, default=(0.8, 0.1, 0.1), help="default 0.8,0.1,0.1")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="replace a non-empty --dest")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("show-batch", help="save a PNG grid of one training batch")
    p.add_argument("--data", required=True, help="a prepared split folder")
    p.add_argument("--split", default="train")
    p.add_argument("--out", default="runs/batch.png")
    p.add_argument("--image-size", type=_size, default=IMAGE_SIZE)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_show_batch)

    from training.distribute import STRATEGIES
    from training.models import ARCHITECTURES, BACKBONES
    from training.train import AUGMENTATIONS, BATCH_NORM, SCHEDULES, TrainConfig

    # Defaults come from TrainConfig, so they are written once.
    d = TrainConfig(data_dir="", run_dir="")
    p = sub.add_parser(
        "train",
        help="train an architecture; results go to --run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", dest="data_dir", required=True, help="a prepared split folder")
    p.add_argument("--run", dest="run_dir", required=True, help="run folder (checkpoints, plots)")
    p.add_argument("--arch", dest="architecture", choices=ARCHITECTURES, default=d.architecture)
    p.add_argument("--epochs", type=int, default=d.epochs, help="(the head's, for transfer)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per replica")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--image-size", type=_size, default=d.image_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--early-stopping",
        type=int,
        default=d.early_stopping,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better val_accuracy (0: off)",
    )
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule)
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPUs)")
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default=d.backbone)
    p.add_argument(
        "--backbone-size",
        type=int,
        default=d.backbone_size,
        help="transfer: resize the input to this side for the backbone, in the model (0: same)",
    )
    p.add_argument(
        "--batch-norm",
        choices=BATCH_NORM,
        default=d.batch_norm,
        help="fine-tuning: adapt trains batch norm with the rest, so its statistics follow "
        "these photos; frozen keeps ImageNet's",
    )
    p.add_argument(
        "--init-from",
        default=d.init_from,
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights (same layers; e.g. another backbone size)",
    )
    p.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs)
    p.add_argument("--fine-tune-learning-rate", type=float, default=d.fine_tune_learning_rate)
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy)
    p.add_argument("--no-cache", action="store_true", help="decode images every epoch")
    p.add_argument("--cache-file", help="cache decoded images on disk instead of in memory")
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch, help="quick runs")
    p.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=d.augment,
        help="basic: flips/rotation/zoom in the model; robust: crops, letterbox, "
        "lighting, blur, JPEG in the data pipeline",
    )
    p.add_argument(
        "--soft-labels",
        default=d.soft_labels,
        help="a teacher's soft-labels.npz (python -m training teacher): distil it",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        default=d.distill_weight,
        help="the teacher's share of each training target (with --soft-labels)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy overall and per class, confusion matrix")
    p.add_argument("--model", required=True, help="a .keras checkpoint or an exported version")
    p.add_argument("--data", required=True, help=PHOTOS_HELP)
    p.add_argument("--out", help="folder for evaluation.json and confusion.png")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--backbone-size", type=int, help="checkpoint of a transfer run: run its backbone at N"
    )
    p.add_argument("--tta", action="store_true", help="checkpoint: average with the mirror")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "robustness", help="accuracy per class under photo transforms, one or more models"
    )
    p.add_argument(
        "--model", required=True, action="append", help="a checkpoint or version (repeatable)"
    )
    p.add_argument("--data", required=True, help=PHOTOS_HELP)
    p.add_argument("--out", default="runs/robustness", help="folder for robustness.json/.md")
    p.add_argument("--transform", action="append", help="only these (repeatable); default all")
    p.add_argument("--limit", type=int, help="use about this many photos, evenly spread")
    p.add_argument(
        "--include", action="append", help="an earlier robustness.json to show alongside"
    )
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser(
        "neither", help="share of not-cat-not-dog images the OOD score catches, and of photos"
    )
    p.add_argument("--model", required=True, help="a version exported with --ood")
    p.add_argument("--data", required=True, help=PHOTOS_HELP)
    p.add_argument("--extra", action="append", help="a folder of neither images (repeatable)")
    p.add_argument("--count", type=int, default=100, help="synthetic images per kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photo-limit", type=int, help="use about this many cat/dog photos")
    p.add_argument("--out", default="runs/neither", help="folder for neither.json/.md")
    p.set_defaults(func=cmd_neither)

    p = sub.add_parser("predict", help="label and probabilities for an image or a folder")
    p.add_argument("--model", required=True, help="a .keras checkpoint or an exported version")
    p.add_argument("path", help="an image file or a folder of images")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="SavedModel + metadata into models/<name>/<version>/")
    p.add_argument("--run", required=True, help="the training run folder")
    p.add_argument("--out", default="models/catdog", help="model base folder")
    p.add_argument("--version", type=int, help="default: one above the highest present")
    p.add_argument("--data", help="split folder: adds validation and test metrics")
    p.add_argument("--checkpoint", help="default: <run>/best.keras")
    p.add_argument(
        "--tta", action="store_true", help="average each image with its mirror (2x compute)"
    )
    p.add_argument(
        "--ood",
        action="store_true",
        help="fit the 'neither' score (needs --data); the model also returns ood_score",
    )
    p.add_argument(
        "--ood-limit", type=int, help="fit on about this many training images, both classes"
    )
    p.add_argument(
        "--backbone-size",
        type=int,
        help="transfer: run the backbone at this side, not the trained one (same weights)",
    )
    p.set_defaults(func=cmd_export)

    from training.int8_check import add_command

    add_command(sub)

    p = sub.add_parser("litert", help="add model.tflite to an exported version, checked")
    p.add_argument("version_dir", help="a version folder (or a model base folder: its latest)")
    p.add_argument("--data", help="split folder (its test/ is used) or a folder of photos")
    p.add_argument("--limit", type=int, help="check on at most this many photos")
    p.set_defaults(func=cmd_litert)

    p = sub.add_parser(
        "teacher",
        help="fit EfficientNet-Lite0 + a linear head; write the training split's soft labels",
    )
    p.add_argument("--data", required=True, help="a prepared split folder")
    p.add_argument(
        "--out", default="runs/teacher-lite0", help="for teacher.json/.keras, soft-labels.npz"
    )
    p.add_argument("--weights", help="a Lite0 PyTorch checkpoint (default: the [teacher] extra's)")
    p.add_argument("--l2", type=float, help="the head's L2 penalty (default: chosen on validation)")
    p.add_argument("--limit", type=int, help="use about this many photos per split")
    p.add_argument(
        "--int8", action="store_true", help="int8 convolution weights (a quarter of the size)"
    )
    p.add_argument(
        "--robust-copies",
        type=int,
        default=0,
        help="also fit the head on N copies of the training photos under --augment robust",
    )
    p.set_defaults(func=cmd_teacher)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one command; errors in the input become exit code 2."""
    drop_expected_gpu_noise()  # before TensorFlow starts: no cuInit error on a CPU-only machine
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
