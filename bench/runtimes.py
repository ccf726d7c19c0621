"""``python -m bench.runtimes``: the model call on TensorFlow vs LiteRT, nothing else.

Each configuration runs in a fresh subprocess (so memory and load times are
those of a process that serves only that runtime), round-robin over the
configurations for ``--rounds`` rounds; the table shows medians. Per
configuration: import and load time, RSS after import + load and after the
largest batch, per-image latency at batch 1 and 32, per-image latency over a
seeded mix of batch sizes 1-32 (what the dynamic batcher hands the model; it
is where resizing the input per call and padding to fixed buckets differ), and
the largest |Δp| against the TensorFlow signature on real test photos.

LiteRT is measured with 1 and 2 interpreter threads (``num_threads``) and with
both batch strategies: ``resize`` (the input resized to each call's batch, the
default of ``catdog.litert``) and ``buckets`` (one interpreter per bucket
1/2/4/8/16/32, batches padded up to the next one).

``--pause PATTERN`` stops (SIGSTOP) the processes whose command line has the
words PATTERN, e.g. ``--pause "training train"`` for a training job, during the
measurement, and always resumes them (SIGCONT) afterwards, on errors and on
SIGINT/SIGTERM too.

    .venv/bin/python -m bench.runtimes --model models/catdog/1 --pause "training train"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from bench.runtimes_report import interleaved_markdown, label, markdown

REPO = Path(__file__).resolve().parents[1]
BUCKETS = (1, 2, 4, 8, 16, 32)
CONFIGS: list[dict[str, Any]] = [
    {"runtime": "tensorflow", "threads": 1, "batching": "resize"},
    {"runtime": "tensorflow", "threads": 2, "batching": "resize"},
    {"runtime": "litert", "threads": 1, "batching": "resize"},
    {"runtime": "litert", "threads": 2, "batching": "resize"},
    {"runtime": "litert", "threads": 1, "batching": "buckets"},
    {"runtime": "litert", "threads": 2, "batching": "buckets"},
    # a busy core beside the model, as the service's decode threads make one
    {"runtime": "litert", "threads": 1, "batching": "resize", "busy_cores": 1},
    {"runtime": "litert", "threads": 2, "batching": "resize", "busy_cores": 1},
]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _median_ms(call: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def worker(config: dict[str, Any], model: str, images_file: str, out_file: str) -> dict:
    """One configuration, measured in this (fresh) process."""
    started = time.perf_counter()
    if config["runtime"] == "tensorflow":
        import tensorflow  # noqa: F401
    else:
        import ai_edge_litert.interpreter  # noqa: F401
    from catdog.runtimes import LITERT_FILE, load_model

    imported = time.perf_counter()
    runtime = load_model(model, config["runtime"], config["threads"])
    if config["batching"] == "buckets":
        from catdog.litert import LiteRTModel

        bucketed = LiteRTModel.from_file(Path(model) / LITERT_FILE, config["threads"], BUCKETS)

        def infer(x: np.ndarray) -> np.ndarray:
            return bucketed.infer(x)[runtime._probabilities]
    else:

        def infer(x: np.ndarray) -> np.ndarray:
            return runtime.infer(x).probabilities

    loaded = time.perf_counter()
    rss_loaded = _rss_mb()

    photos = np.load(images_file)  # real test photos, float32 [32, H, W, 3]
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(config.get("busy_cores", 0))
    ]
    try:
        timings = _timings(infer, photos)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    np.save(out_file, infer(photos))
    return {
        **config,
        "import_s": imported - started,
        "load_s": loaded - imported,
        "rss_loaded_mb": rss_loaded,
        "rss_after_mb": _rss_mb(),
        **timings,
    }


def _timings(infer: Any, photos: np.ndarray) -> dict[str, float]:
    """Per-image latency at batch 1, at batch 32 and over a mix of batch sizes."""
    single = photos[:1]
    for _ in range(3):
        infer(single)
    batch1 = _median_ms(lambda: infer(single), 40)
    infer(photos)
    cpu_started = time.process_time()
    batch32 = _median_ms(lambda: infer(photos), 3) / len(photos)
    batch32_cpu = 1000 * (time.process_time() - cpu_started) / (3 * len(photos))
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, len(photos) + 1, 16)  # the same mix as interleaved()
    for size in sizes:  # warm-up: every size (and bucket) seen once, as in a running server
        infer(photos[:size])
    mixed_started, cpu_started = time.perf_counter(), time.process_time()
    for size in sizes:
        infer(photos[:size])
    images = int(sizes.sum())
    return {
        "batch1_ms": batch1,
        "batch32_ms_per_image": batch32,
        "batch32_cpu_ms_per_image": batch32_cpu,
        "mixed_ms_per_image": 1000 * (time.perf_counter() - mixed_started) / images,
        "mixed_cpu_ms_per_image": 1000 * (time.process_time() - cpu_started) / images,
        "mixed_images": images,
    }


def _matching(words: str) -> list[int]:
    """Processes (not this one) whose argv holds ``words`` as consecutive arguments."""
    wanted = words.split()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(argv[i : i + len(wanted)] == wanted for i in range(len(argv))):
            found.append(int(proc.name))
    return found


@contextmanager
def paused(words: str | None) -> Iterator[list[int]]:
    """SIGSTOP the matching processes for the block; SIGCONT them however it ends."""
    pids = _matching(words) if words else []

    def resume(*_: Any) -> None:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def on_signal(signum: int, _frame: Any) -> None:
        resume()
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        if pids:
            print(f"paused {pids} ({words!r})", file=sys.stderr)
            time.sleep(1.0)  # let the cores settle
        yield pids
    finally:
        resume()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pids:
            print(f"resumed {pids}", file=sys.stderr)


def _photos(data: Path, size: tuple[int, int], count: int = 32) -> np.ndarray:
    from catdog.preprocessing import preprocess

    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(files) // count)
    return np.stack([preprocess(p, size) for p in files[::step][:count]])


def run(model: str, data: Path, rounds: int) -> list[dict[str, Any]]:
    """All configurations, ``rounds`` times each in fresh processes; raw results."""
    from catdog.contract import ModelContract

    contract = ModelContract.read(model)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "photos.npy"
        np.save(images, _photos(data, contract.image_size))
        for round_ in range(rounds):
            for i, config in enumerate(CONFIGS):
                out = Path(tmp) / f"p{round_}-{i}.npy"
                command = [
                    sys.executable,
                    "-m",
                    "bench.runtimes",
                    "--worker",
                    json.dumps(config),
                    "--model",
                    model,
                    "--images",
                    str(images),
                    "--probabilities",
                    str(out),
                ]
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
                done = subprocess.run(
                    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
                )
                if done.returncode:
                    raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["config"], row["round"], row["probabilities"] = i, round_, str(out)
                results.append(row)
                print(f"round {round_ + 1}/{rounds} {label(config)}", file=sys.stderr)
        reference = np.load(results[0]["probabilities"])  # TensorFlow, 1 thread, round 1
        for row in results:
            row["max_abs_diff"] = float(np.max(np.abs(np.load(row["probabilities"]) - reference)))
            del row["probabilities"]
    return results


INTERLEAVED = [(1, None), (2, None), (1, BUCKETS), (2, BUCKETS)]  # (threads, buckets)


def interleaved(model: str, data: Path, blocks: int = 4) -> list[dict[str, Any]]:
    """LiteRT threads x batching in one process, in alternating blocks of calls.

    Every configuration meets the same background load, so the comparison holds
    on a busy machine where fresh-process rounds drift. Per block and
    configuration: 25 calls at batch 1, 2 at batch 32, the 16-batch mix once.
    """
    from catdog.contract import ModelContract
    from catdog.litert import LITERT_FILE, LiteRTModel

    photos = _photos(data, ModelContract.read(model).image_size)
    content = (Path(model) / LITERT_FILE).read_bytes()
    models = [LiteRTModel(content, threads, buckets) for threads, buckets in INTERLEAVED]
    sizes = np.random.default_rng(0).integers(1, len(photos) + 1, 16)
    times: list[dict[str, list[float]]] = [{"b1": [], "b32": [], "mix": []} for _ in models]
    for litert in models:  # warm-up: every batch size and bucket once
        for size in [*sizes, len(photos)]:
            litert.infer(photos[:size])
    for _ in range(blocks):
        for litert, spent in zip(models, times):
            for _ in range(25):
                started = time.perf_counter()
                litert.infer(photos[:1])
                spent["b1"].append(1000 * (time.perf_counter() - started))
            for _ in range(2):
                started = time.perf_counter()
                litert.infer(photos)
                spent["b32"].append(1000 * (time.perf_counter() - started) / len(photos))
            started = time.perf_counter()
            for size in sizes:
                litert.infer(photos[:size])
            spent["mix"].append(1000 * (time.perf_counter() - started) / int(sizes.sum()))
    return [
        {
            "threads": threads,
            "batching": "buckets" if buckets else "resize",
            **{f"{k}_min_ms": min(v) for k, v in spent.items()},
            **{f"{k}_median_ms": statistics.median(v) for k, v in spent.items()},
            "interpreters": litert.interpreters,
        }
        for (threads, buckets), spent, litert in zip(INTERLEAVED, times, models)
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write it (and the raw numbers as JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.runtimes", description=__doc__)
    parser.add_argument("--model", default="models/catdog/1", help="a version with model.tflite")
    parser.add_argument("--data", default="data/split/test", help="photos for parity and timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/runtimes.md")
    parser.add_argument("--pause", metavar="WORDS", help='e.g. "training train"')
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--probabilities", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(args.worker)
        print(json.dumps(worker(config, args.model, args.images, args.probabilities)))
        return 0
    command = "python -m bench.runtimes " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    with paused(args.pause) as pids:
        results = run(args.model, Path(args.data), args.rounds)
        rows = interleaved(args.model, Path(args.data))
    report = markdown(results, CONFIGS, ".venv/bin/" + command, pids) + interleaved_markdown(rows)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    raw = {"fresh_processes": results, "interleaved": rows}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
