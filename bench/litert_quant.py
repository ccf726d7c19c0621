"""``python -m bench.litert_quant``: what quantising activations would buy a network on LiteRT.

The shipped ``model.tflite`` computes in float32, as its SavedModel does, so the two
agree to 1e-5. This measures the two ways TensorFlow's converter offers to go
further, on a Keras checkpoint:

* ``float32``: the plain conversion (what ``export`` starts from; a network of
  ``Int8Conv`` layers, such as version 4's, is first rebuilt with float
  convolutions holding the same kernels, ``float32(q) × scale``, which is what its
  ``model.tflite`` computes);
* ``dynamic range``: int8 weights, activations quantised on each call;
* ``full integer``: int8 weights and activations, their ranges calibrated on
  ``--calibration`` validation photos (float input and output).

Each file runs with XNNPACK on one thread: milliseconds per image at batch 1 and 8
(medians of interleaved rounds on the first test photos), file size, accuracy on
the test photos (all, per class), and against ``float32`` the largest probability
difference and how many labels change.

    .venv/bin/python -m bench.litert_quant --checkpoint runs/lite0-int8-robust/teacher.keras \\
        --data data/split
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness
from bench.harness import markdown, new_report, table, write_report
from bench.litert_files import median_ms
from catdog.contract import CLASS_NAMES
from catdog.litert import LiteRTModel
from catdog.preprocessing import preprocess
from training.data import list_images
from training.int8 import float_network

FORMS = ("float32", "dynamic range", "full integer")


def _convert(model: Any, form: str, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if form != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if form == "full integer":

        def photos() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None]]

        converter.representative_dataset = photos
    return bytes(converter.convert())


def _photos(
    folder: Path, limit: int | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = list_images(folder, CLASS_NAMES, limit)
    return np.stack([preprocess(p, size) for p in paths]).astype(np.float32), labels


def _probabilities(model: LiteRTModel, images: np.ndarray, batch: int = 8) -> np.ndarray:
    parts = [model.infer(images[s : s + batch]) for s in range(0, len(images), batch)]
    return np.concatenate([next(iter(p.values())) for p in parts])


def measure(
    checkpoint: Path, data: Path, calibration: int, limit: int | None, rounds: int
) -> list[dict[str, Any]]:
    """One row per form of the checkpoint's LiteRT file."""
    import keras

    import training.quantize  # noqa: F401  (registers Int8Conv for loading)
    import training.teacher  # noqa: F401

    model = float_network(keras.models.load_model(checkpoint, compile=False))
    size = tuple(model.input_shape[1:3])
    calib, _ = _photos(data / "validation", calibration, size)
    images, labels = _photos(data / "test", limit, size)
    contents = {form: _convert(model, form, calib) for form in FORMS}
    models = {form: LiteRTModel(content, threads=1) for form, content in contents.items()}
    times = median_ms(models, images, rounds)
    probabilities = {form: _probabilities(runtime, images) for form, runtime in models.items()}
    reference = probabilities["float32"]
    rows = []
    for form in FORMS:
        predicted = probabilities[form].argmax(axis=1)
        row = {
            "checkpoint": str(checkpoint),
            "form": form,
            "bytes": len(contents[form]),
            "ms_batch_1": times[form][1],
            "ms_batch_8": times[form][8],
            "photos": len(labels),
            "accuracy": round(float(np.mean(predicted == labels)) * 100, 2),
        }
        for index, name in enumerate(CLASS_NAMES):
            mine = labels == index
            row[name] = round(float(np.mean(predicted[mine] == index)) * 100, 2)
        row["max_abs_diff"] = float(f"{np.max(np.abs(probabilities[form] - reference)):.3g}")
        row["labels_changed"] = int(np.sum(predicted != reference.argmax(axis=1)))
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the markdown and JSON reports."""
    parser = harness.parser("litert_quant", __doc__, "litert-quant.md", model=False)
    parser.add_argument("--checkpoint", required=True, help="a .keras checkpoint")
    parser.add_argument("--data", required=True, help="a prepared split folder")
    parser.add_argument("--calibration", type=int, default=100, help="validation photos")
    parser.add_argument("--limit", type=int, help="use about this many test photos")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    report = new_report("bench.litert_quant", sys.argv[1:] if argv is None else argv)
    report["rows"] = measure(
        Path(args.checkpoint), Path(args.data), args.calibration, args.limit, args.rounds
    )
    columns = [("file", "form"), ("bytes", "bytes"), ("ms/image, batch 1", "ms_batch_1")]
    columns += [("ms/image, batch 8", "ms_batch_8"), ("test photos", "photos")]
    columns += [("accuracy %", "accuracy"), *((f"{name} %", name) for name in CLASS_NAMES)]
    columns += [("max abs diff vs float32", "max_abs_diff"), ("labels changed", "labels_changed")]
    about = (
        f"{report['started']}; {report['environment']['cpus']} CPUs, one LiteRT thread, "
        f"medians of {args.rounds} rounds on the first 8 test photos; "
        f"`{args.checkpoint}`, calibrated on {args.calibration} validation photos."
    )
    body = table(report["rows"], columns, text=("form",))
    text = markdown("LiteRT with quantised activations", report, about, body)
    write_report(report, text, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
