"""The measurements of ``bench.batch``: a process tree's peak memory, the in-process
limit (decode + model, no Ray), the service under closed-loop clients (``bench.serve_load``).

``TreeMemory`` samples, every 0.2 s, the resident memory of some root processes
and all their descendants (``/proc``) and keeps the peak of the sum: the batch job
is a driver plus Ray's own processes and workers, so one process's ``VmHWM``
would miss most of it. Pages of Ray's shared-memory object store count in each
process that maps them, so the sum can count them more than once: an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import CACHE, cpu_seconds, descendants, memory_mb, proc_status_kb, uvicorn_server
from bench.serve_images import ImageSet
from bench.serve_limit import pipelined_rate
from bench.serve_load import machine_busy_seconds, run_load, summarize

SAMPLE_S = 0.2


def tree_pids(roots: list[int]) -> set[int]:
    """``roots`` and all their descendants now."""
    return {*roots, *(pid for root in roots for pid in descendants(root))}


class TreeMemory:
    """The peak, over time, of the summed RSS of some process trees (a sampling thread),
    and the CPU the rest of the machine used meanwhile (``other_cores``: busy cores of
    ``/proc/stat`` minus the trees' own CPU seconds, over the wall time; well above 0
    means something else ran and the row is not to be trusted)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak_mb = 0.0
        self.other_cores = 0.0
        self._cpu: dict[int, float] = {}  # the last CPU seconds seen of each process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            pids = tree_pids(self.roots)
            kb = sum(proc_status_kb(pid, "VmRSS") or 0 for pid in pids)
            self.peak_mb = max(self.peak_mb, kb * 1024 / 1e6)
            for pid in pids:
                self._cpu[pid] = cpu_seconds(pid) or self._cpu.get(pid, 0.0)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> TreeMemory:
        self._started = time.perf_counter(), machine_busy_seconds(), self._own_cpu()
        self._thread.start()
        return self

    def _own_cpu(self) -> float:
        return sum(cpu_seconds(p) or 0.0 for p in tree_pids(self.roots))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        wall, busy, own = self._started
        wall = time.perf_counter() - wall
        used = sum(self._cpu.values()) - own
        self.other_cores = round(max(0.0, machine_busy_seconds() - busy - used) / wall, 2)


# ---------------------------------------------------------------- the in-process limit


def in_process_limit(model: Path, files: list[Path], batch: int, workers: int) -> dict[str, Any]:
    """Files/s of read + decode + model in this process, no Ray: a pool of ``workers``
    decoding threads feeding one interpreter with ``workers`` threads, the next batch
    decoding while the model runs this one (``bench.serve_limit``'s loop, the layout it
    found best; ``workers`` threads each with a one-thread interpreter, the actors'
    layout, measured 55 files/s against 65 on 200 photos here). A file that does not
    decode is left out, as the job leaves it."""
    from catdog.preprocessing import ImageError, preprocess
    from catdog.runtimes import load_model

    runtime = load_model(model, "auto", workers)
    size, starts = runtime.contract.image_size, iter(range(0, len(files), batch))

    def decode(path: Path) -> np.ndarray | None:
        with contextlib.suppress(ImageError):
            return preprocess(path.read_bytes(), size)
        return None

    with ThreadPoolExecutor(workers) as pool:

        def chunk() -> list[Future]:
            start = next(starts, len(files))
            return [pool.submit(decode, path) for path in files[start : start + batch]]

        started = time.perf_counter()
        pipelined_rate(runtime.infer, chunk)
        seconds = time.perf_counter() - started
    return {
        "files_per_s": round(len(files) / seconds, 1),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round((proc_status_kb(os.getpid(), "VmHWM") or 0) * 1024 / 1e6, 1),
    }


# ---------------------------------------------------------------- the service


def service_rate(model_dir: Path, files: list[Path], clients: int) -> dict[str, Any]:
    """A real service (its defaults) under ``clients`` closed-loop clients posting 2,000 of
    ``files`` (spread over them) to ``/predict`` for 30 s (``bench.serve_load``, as ``bench
    serve`` does): req/s and the server's peak RSS."""
    photos = [(path.name, path.read_bytes()) for path in files[:: max(1, len(files) // 2000)]]
    images = ImageSet({"original": photos}, {"original": 1.0})
    args = argparse.Namespace(warmup=3.0, duration=30.0, timeout=120.0, seed=0)
    with uvicorn_server(model_dir, CACHE / "logs" / "batch-service.log") as server:
        row = summarize(asyncio.run(run_load(server, images, clients, args)))
        peak = memory_mb(server.process.pid)["VmHWM"]
    keep = ("statuses", "other_cores", "clients")
    return {
        "files_per_s": row["req_per_s"],
        "seconds": args.duration,
        "peak_rss_mb": round(peak, 1),
    } | {k: row[k] for k in keep}
