"""The in-process limit of ``bench serve``: decode + preprocess + model without HTTP.

The served version, with the runtime and threads per model call the service would
pick, on the server's cores (a pinned subprocess, ``bench serve --inproc-only``):
images/s at each of ``--batch-sizes``, decoding in a pool overlapped with the model,
and the model alone on one pre-decoded batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import CACHE, ROOT, pin_to, slug
from bench.serve_images import ImageSet
from bench.serve_load import settings_env

Predictor = Callable[[np.ndarray], Any]
Decoder = Callable[[], list[Future]]


def service_runtime(args: argparse.Namespace) -> tuple[str, int]:
    """(runtime, threads of one model call) as the service would pick them on these cores."""
    from app.core.config import Settings  # the service's defaults live there only
    from app.core.service import usable_cpus  # and its rule for "one per usable core"

    env = settings_env(args)
    default = Settings.model_fields["inference_threads"].default
    threads = int(env.get("CATDOG_INFERENCE_THREADS", default)) or usable_cpus()
    return env.get("CATDOG_RUNTIME", "auto"), threads


def measure_in_process(
    model_dir: Path, images: ImageSet, args: argparse.Namespace
) -> dict[str, Any]:
    """Images/s of decode + preprocess + model in this process, per batch size."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from catdog.preprocessing import preprocess
    from catdog.runtimes import latest_version, load_model

    runtime, threads = service_runtime(args)
    loaded = load_model(latest_version(model_dir), runtime, threads)
    predictor, size = loaded.infer, tuple(loaded.contract.image_size)
    workers = os.cpu_count() or 1
    rows = []
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        for batch in args.batch_sizes:
            rng = random.Random(args.seed)

            def decode(n: int = batch, rng: random.Random = rng) -> list[Future]:
                return [
                    pool.submit(preprocess, images.pick_in_group(rng)[1][1], size) for _ in range(n)
                ]

            predictor(np.stack([f.result() for f in decode()]))  # warm-up at this batch size
            end_to_end = pipelined_rate(predictor, decode, args.inproc_duration)
            model_only = model_rate(predictor, decode, batch, args.inproc_duration)
            rows.append(
                {"batch": batch, "images_per_s": end_to_end, "model_only_images_per_s": model_only}
            )
            print(
                f"  [{model_dir} in-process] batch {batch:>3}: {end_to_end:8.2f} images/s "
                f"(model only {model_only:8.2f})",
                flush=True,
            )
    return {
        "runtime": loaded.name,
        "model_threads": threads,
        "decode_threads": workers,
        "image_size": list(size),
        "rows": rows,
    }


def measure_in_process_pinned(
    model_dir: Path, runtime: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    """``measure_in_process`` with ``runtime`` in a subprocess, pinned to the server's cores."""
    out = CACHE / "logs" / f"{slug(model_dir)}-{runtime or 'default'}-inproc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.serve", *args.argv, "--model-dir", str(model_dir)]
    command += ["--no-pin", "--inproc-duration", str(args.inproc_duration)]
    command += ["--inproc-only", str(out)]
    command += [f"--server-env=CATDOG_RUNTIME={runtime}"] if runtime else []
    subprocess.run(command, cwd=ROOT, check=True, preexec_fn=pin_to(args.server_cpus))
    return json.loads(out.read_text())


def combine_in_process(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One in-process table from the measurements before and after the services: the mean."""
    rows = []
    for first, second in zip(before["rows"], after["rows"]):
        row: dict[str, Any] = {"batch": first["batch"]}
        for key in ("images_per_s", "model_only_images_per_s"):
            row[key] = round((first[key] + second[key]) / 2, 2)
        row["before"], row["after"] = first["images_per_s"], second["images_per_s"]
        rows.append(row)
    return {**after, "rows": rows, "best": max(rows, key=lambda r: r["images_per_s"])}


def pipelined_rate(predictor: Predictor, decode: Decoder, seconds: float = math.inf) -> float:
    """Images/s when the next batch decodes in the pool while the model runs this one, for
    ``seconds`` or until ``decode`` has no more (an image that did not decode, ``None``,
    is left out)."""
    pending, done = decode(), 0
    started = time.perf_counter()
    while pending and time.perf_counter() - started < seconds:
        arrays = [a for a in (f.result() for f in pending) if a is not None]
        pending = decode()
        if arrays:
            predictor(np.stack(arrays))
        done += len(arrays)
    elapsed = time.perf_counter() - started
    for future in pending:
        future.result()
    return round(done / elapsed, 2)


def model_rate(predictor: Predictor, decode: Decoder, batch: int, seconds: float) -> float:
    """Images/s of the model alone on one pre-decoded batch."""
    arrays = np.stack([f.result() for f in decode()])
    predictor(arrays)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor(arrays)
        done += batch
    return round(done / (time.perf_counter() - started), 2)
