"""``python -m bench.litert_files``: what ``training.flatbuffer.shrink`` does to a LiteRT file.

For each exported version given, the SavedModel is converted three ways: the
converter's own output, that output with its constants folded (float32
kernels), and with ``shrink`` (folded, exact int8 kernels behind DEQUANTIZE,
what ``model.tflite`` holds). Each is run by LiteRT (XNNPACK, one thread) on the
same random images, interleaved over ``--rounds`` rounds; the table shows file
size, median milliseconds per image at batch 1 and 8, and the largest
difference of every output against the converter's file.

    .venv/bin/python -m bench.litert_files --version models/catdog/3 --version models/catdog/4
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness
from bench.harness import markdown, new_report, table, write_report
from catdog.contract import ModelContract
from catdog.litert import LiteRTModel
from training.flatbuffer import operator_counts, shrink

FORMS = ("converter", "folded", "shrink")


def _converted(version: Path) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(version), ["serving_default"])
    return bytes(converter.convert())


def median_ms(
    models: Mapping[str, LiteRTModel], images: np.ndarray, rounds: int
) -> dict[str, dict[int, float]]:
    """Median milliseconds per image of each model at batch 1 and 8 (the first images),
    over ``rounds`` rounds that take the models in turn, after a warm-up call of each
    (interpreters created, weights prepared)."""
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in models}
    for model in models.values():
        model.infer(images[:1]), model.infer(images[:8])
    for _ in range(rounds):
        for name, model in models.items():
            for batch in (1, 8):
                started = time.perf_counter()
                model.infer(images[:batch])
                times[name][batch].append((time.perf_counter() - started) * 1000 / batch)
    return {
        name: {batch: round(statistics.median(ms), 2) for batch, ms in by_batch.items()}
        for name, by_batch in times.items()
    }


def measure(version: Path, rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    """One row per form of the version's LiteRT file."""
    raw = _converted(version)
    contents = {"converter": raw, "folded": shrink(raw, int8=False), "shrink": shrink(raw)}
    models = {form: LiteRTModel(content, threads=1) for form, content in contents.items()}
    contract = ModelContract.read(version)
    images = np.random.default_rng(seed).random((8, *contract.input_shape), dtype=np.float32)
    reference = models["converter"].infer(images)
    times = median_ms(models, images, rounds)
    rows = []
    for form, model in models.items():
        outputs = model.infer(images)
        diff = max(float(np.max(np.abs(outputs[k] - reference[k]))) for k in reference)
        counts = operator_counts(contents[form])
        rows.append(
            {
                "version": str(version),
                "form": form,
                "bytes": len(contents[form]),
                "ms_batch_1": times[form][1],
                "ms_batch_8": times[form][8],
                "max_abs_diff": diff,
                "dequantize": counts.get("DEQUANTIZE", 0),
                "per_call_kernel_ops": sum(counts.get(op, 0) for op in ("CAST", "MUL")),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the markdown and JSON reports."""
    parser = harness.parser("litert_files", __doc__, "litert-files.md", model=False)
    parser.add_argument("--version", action="append", required=True, help="a version folder")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    report = new_report("bench.litert_files", sys.argv[1:] if argv is None else argv)
    report["rows"] = [row for v in args.version for row in measure(Path(v), args.rounds)]
    columns = [("version", "version"), ("file", "form"), ("bytes", "bytes")]
    columns += [("ms/image, batch 1", "ms_batch_1"), ("ms/image, batch 8", "ms_batch_8")]
    columns += [("max abs diff vs converter", "max_abs_diff"), ("DEQUANTIZE ops", "dequantize")]
    columns += [("CAST + MUL ops", "per_call_kernel_ops")]
    about = (
        f"{report['started']}; {report['environment']['cpus']} CPUs, one LiteRT thread, "
        f"medians of {args.rounds} rounds, 8 random images."
    )
    body = table(report["rows"], columns, text=("version", "form"))
    text = markdown("LiteRT files: the converter's, folded, shrunk", report, about, body)
    write_report(report, text, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
