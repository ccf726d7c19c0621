"""``python -m bench.int8_openvino``: the served ``model.tflite`` on LiteRT against
OpenVINO reading the same file.

Issue 28 takes OpenVINO as a third runtime only if it beats LiteRT int8 by >= 1.3x
in ``bench/serve``. OpenVINO reads a ``.tflite`` directly and keeps its int8
quantisation (``FakeQuantize`` nodes, run as u8 convolutions), so this times the
same file on both, on the same preprocessed 480x320 photos (``bench serve``'s):
milliseconds per image at batch 1 and 8, best of ``--passes`` interleaved passes,
two threads per call as the service runs LiteRT, and

* OpenVINO with the ``LATENCY`` hint (one stream), its default precision (bf16
  where it does not run int8) and with ``f32``;
* OpenVINO with the ``THROUGHPUT`` hint (two one-thread streams), one call at a
  time, and the batch split over both streams at once;
* LiteRT with two one-thread interpreters, the batch split over both at once.

It also reports the largest difference of a probability from LiteRT's on the
first 8 photos. OpenVINO is not a dependency of the project: install it to run
this (``pip install openvino``).

    .venv/bin/python -m bench.int8_openvino --model-dir models/catdog \\
        --out bench/results/int8-openvino.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import markdown, new_report, table, write_report
from bench.int8_decode import other_cpu
from catdog.contract import LITERT_FILE
from catdog.litert import LiteRTModel
from catdog.preprocessing import preprocess
from catdog.runtimes import latest_version

Call = Callable[[np.ndarray], Any]
LITERT = "LiteRT, 2 threads (served)"


def split(call: Call, wait: Callable[[], Any] | None = None) -> Call:
    """``call`` on each half of a batch at once (one half for a batch of 1)."""

    def run(batch: np.ndarray) -> None:
        halves = [h for h in np.array_split(batch, 2) if len(h)]
        results = [call(h) for h in halves]
        if wait is not None:
            wait()
        else:
            [r.result() for r in results]

    return run


def calls(path: Path) -> tuple[dict[str, Call], str]:
    """Each runtime setting's call on a float32 batch, and OpenVINO's version."""
    import openvino as ov

    content = path.read_bytes()
    core = ov.Core()

    def compiled(hint: str, precision: str | None = None) -> Any:
        model = core.read_model(str(path))
        model.reshape([-1, *LiteRTModel(content).input_shape])
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": hint}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        return core.compile_model(model, "CPU", config)

    def one(model: Any) -> Call:
        request = model.create_infer_request()
        return lambda batch: request.infer({0: batch})

    throughput = compiled("THROUGHPUT")
    queue = ov.AsyncInferQueue(throughput, 2)
    single = LiteRTModel(content, threads=1)
    pool = ThreadPoolExecutor(2)
    return {
        LITERT: LiteRTModel(content, threads=2).infer,
        "OpenVINO, LATENCY (bf16 where not int8)": one(compiled("LATENCY")),
        "OpenVINO, LATENCY, f32": one(compiled("LATENCY", "f32")),
        "OpenVINO, THROUGHPUT, one call at a time": one(throughput),
        "OpenVINO, 2 streams, batch split over both": split(
            lambda h: queue.start_async({0: h}), queue.wait_all
        ),
        "LiteRT, 2 one-thread interpreters, batch split over both": split(
            lambda h: pool.submit(single.infer, h)
        ),
    }, ov.get_version()


def main(argv: Sequence[str] | None = None) -> None:
    """Time every runtime setting at batch 1 and 8 and write the report."""
    p = argparse.ArgumentParser(prog="python -m bench.int8_openvino", description=__doc__[:80])
    p.add_argument("--model-dir", type=Path, default=Path("models/catdog"))
    p.add_argument("--photos", type=int, default=64, help="480x320 photos from bench/.cache")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/int8-openvino.md"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    path = latest_version(args.model_dir) / LITERT_FILE
    files = sorted(Path("bench/.cache/images/480x320").glob("*.jpg"))[: args.photos]
    images = np.stack([preprocess(f.read_bytes()) for f in files])
    runs, version = calls(path)
    report = new_report("bench.int8_openvino", argv, openvino=version, model=str(path))
    busy, own = other_cpu()
    wall = time.perf_counter()
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.passes):
        for batch in (1, 8):
            chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
            for name, call in runs.items():
                call(chunks[0])
                start = time.perf_counter()
                for chunk in chunks:
                    call(chunk)
                ms = (time.perf_counter() - start) / len(images) * 1e3
                best[name, batch] = min(best.get((name, batch), ms), ms)
    busy_end, own_end = other_cpu()
    other = round((busy_end - busy - (own_end - own)) / (time.perf_counter() - wall), 2)
    import openvino as ov

    reference = runs[LITERT](images[:8])["probabilities"]
    answer = ov.Core().compile_model(str(path), "CPU").create_infer_request().infer({0: images[:8]})
    got = next(v for v in answer.values() if v.ndim == 2)
    rows = [
        {
            "runtime": name,
            "b1": round(best[name, 1], 2),
            "b8": round(best[name, 8], 2),
            "x1": round(best[LITERT, 1] / best[name, 1], 2),
            "x8": round(best[LITERT, 8] / best[name, 8], 2),
        }
        for name in runs
    ]
    report.update(rows=rows, other_cpu_cores=other)
    report["max_probability_diff"] = round(float(np.abs(got - reference).max()), 4)
    columns = [("runtime", "runtime"), ("ms/image, batch 1", "b1"), ("ms/image, batch 8", "b8")]
    columns += [("speed vs LiteRT, batch 1", "x1"), ("speed vs LiteRT, batch 8", "x8")]
    about = (
        f"`{path}`, {len(images)} photos of 480x320 preprocessed; OpenVINO {version}; best of "
        f"{args.passes} interleaved passes; the rest of the machine used {other} cores "
        f"meanwhile. OpenVINO's probabilities differ from LiteRT's by up to "
        f"{report['max_probability_diff']} on 8 photos. See `bench/int8_openvino.py`."
    )
    body = [*table(rows, columns, text=["runtime"]), ""]
    title = "LiteRT against OpenVINO on the int8 model.tflite"
    write_report(report, markdown(title, report, about, body), args.out)


if __name__ == "__main__":
    main()
