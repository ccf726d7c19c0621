"""Serving benchmark: the real service under closed-loop load, against the in-process limit.

For each model base folder and each batching mode (``on``: the service defaults;
``off``: ``CATDOG_MAX_BATCH_SIZE=1``) this starts ``uvicorn app.main:app`` as a
subprocess on a free port, times it until ``GET /readyz`` answers 200, then for
each client count runs C closed-loop asyncio clients (httpx, one connection
each) that POST a random photo to ``/predict`` for a warm-up and then for
``--duration`` seconds. It records latency and outcome of every request started
after the warm-up, the batch sizes the service used (from ``/metrics``) and the
server's peak RSS (``VmHWM`` in ``/proc/<pid>/status``).

With every server stopped, it then loads the same SavedModel in this process
and measures images/s of decode + preprocess (a thread pool of ``os.cpu_count()``
threads, at least as many as the service uses, overlapped with the model) +
model at several batch sizes: the best is what the model can do on these
cores, and ``service req/s / that`` is the service's efficiency.

CPU pinning (default on a machine with 2+ cores): the load generator runs on
the first allowed core and the server on the rest, so the client's CPU use does
not distort batching on vs off; the in-process limit is measured in a
subprocess pinned to the server's cores, so efficiency compares like with like.
``--no-pin`` shares every core.

``--model-dir2 untrained:article-3`` benchmarks an untrained export of that
architecture (``bench.models``): same graph and speed, no training run needed.

Definitions used in the tables:

* ``req/s``: 200 answers that completed inside the measured window / its length.
* ``p50/p90/p99``: latency of the 200 answers to requests started in the window
  (requests still running at the end are waited for).
* ``503``, ``other``: other HTTP statuses; ``socket``: transport errors
  (connection refused/reset, protocol errors); ``timeouts``: no answer within
  ``--timeout``.
* ``mean batch``: ``catdog_batch_size_sum / _count`` over the measured window.
* ``peak RSS``: the server's high-water mark since it started (so it includes
  the earlier, smaller client counts of the same server).

Usage::

    .venv/bin/python -m bench.serve --model-dir models/catdog \\
        --model-dir2 untrained:article-3 --clients 1,16,64,256 --duration 20 \\
        --images data/split/test --out bench/results/serve.md

The report ends with the issue's targets (for ``article-3`` at 64 clients:
throughput >= 1.4x and p99 <= 0.6x batching-off, >= 85% of the in-process limit;
1 client p50 no worse than off; ready <= 5 s; 256 clients without socket errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
MODES: dict[str, dict[str, str]] = {"on": {}, "off": {"CATDOG_MAX_BATCH_SIZE": "1"}}
GROUPS = ("original", "480x320", "12MP")
GROUP_SIZES = {"480x320": (480, 320), "12MP": (4000, 3000)}
JPEG_QUALITY = 90
NOISE_SIGMA = 6.0  # grain, so the upscaled JPEGs weigh what a camera's photo does


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """JPEG bytes by group, and the probability of each group in the request mix."""

    groups: dict[str, list[tuple[str, bytes]]]
    weights: dict[str, float]

    def pick(self, rng: random.Random) -> tuple[str, bytes]:
        """A (file name, bytes) drawn from the mix."""
        return self.pick_in_group(rng)[1]

    def pick_in_group(self, rng: random.Random) -> tuple[str, tuple[str, bytes]]:
        """A group drawn from the mix, and a (file name, bytes) from that group."""
        names = [g for g in self.weights if self.groups.get(g)]
        group = rng.choices(names, [self.weights[g] for g in names])[0]
        return group, rng.choice(self.groups[group])

    def describe(self) -> dict[str, Any]:
        """Per group: how many files, their mean size in KB and the mix weight."""
        return {
            g: {
                "files": len(files),
                "mean_kb": round(sum(len(b) for _, b in files) / len(files) / 1024, 1),
                "weight": self.weights.get(g, 0.0),
            }
            for g, files in self.groups.items()
            if files
        }


def sample_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` photos, half from each class folder (cat/dog), chosen reproducibly."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{folder}: no class folders (expected e.g. {folder}/cat/*.jpg)")
    rng = random.Random(seed)
    chosen: list[Path] = []
    for index, cls in enumerate(classes):
        files = sorted(cls.glob("*.jpg")) + sorted(cls.glob("*.jpeg"))
        share = count // len(classes) + (1 if index < count % len(classes) else 0)
        chosen += rng.sample(files, min(share, len(files)))
    rng.shuffle(chosen)
    return chosen


def make_variant(source: Path, size: tuple[int, int], seed: int) -> bytes:
    """``source`` resized to ``size`` (width, height), with mild grain, as a JPEG."""
    with Image.open(source) as image:
        resized = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, pixels.shape)
    grainy = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    grainy.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def cached_variant(source: Path, group: str, seed: int) -> bytes:
    """The ``group`` version of ``source`` from ``bench/.cache/``, made on first use."""
    path = CACHE / "images" / group / f"{source.parent.name}-{source.stem}.jpg"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(make_variant(source, GROUP_SIZES[group], seed))
        tmp.rename(path)
    return path.read_bytes()


def build_image_set(args: argparse.Namespace) -> ImageSet:
    """Originals from ``--images``, plus 480x320 and 12MP versions of some of them."""
    photos = sample_photos(Path(args.images), args.n_images, args.seed)
    counts = {"original": len(photos), "480x320": args.n_medium, "12MP": args.n_huge}
    groups: dict[str, list[tuple[str, bytes]]] = {"original": []}
    for photo in photos:
        groups["original"].append((photo.name, photo.read_bytes()))
    for group in GROUPS[1:]:
        groups[group] = [
            (f"{group}-{p.name}", cached_variant(p, group, args.seed + i))
            for i, p in enumerate(photos[: counts[group]])
        ]
    return ImageSet(groups, dict(zip(GROUPS, args.mix)))


# --------------------------------------------------------------------------- server


def pin_to(cpus: set[int] | None) -> Any:
    """A ``preexec_fn`` that pins a child process (all its future threads) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def split_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(client cores, server cores): the first allowed core, and the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    if not pin or len(allowed) < 2:
        return None, None
    return {allowed[0]}, set(allowed[1:])


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in kB (e.g. VmHWM, the peak RSS), None if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return None


def server_env(model_dir: Path, mode: str, extra: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment without any CATDOG_* knob, plus ``--server-env`` and the mode."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}
    env.update(CATDOG_MODEL_DIR=str(model_dir), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(item.split("=", 1) for item in extra)
    env.update(MODES[mode])
    return env


@dataclass
class Server:
    """A running ``uvicorn app.main:app`` subprocess."""

    process: subprocess.Popen
    url: str
    log_path: Path
    ready_s: float = 0.0

    @property
    def peak_rss_mb(self) -> float | None:
        """The server's peak resident memory so far, in MB."""
        kb = proc_status_kb(self.process.pid, "VmHWM")
        return None if kb is None else round(kb / 1024, 1)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def wait_ready(server: Server, started: float, timeout: float) -> float:
    """Seconds from process start until GET /readyz is 200; fails if the server dies."""
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() - started < timeout:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {server.process.returncode} before it was ready:\n"
                    f"{server.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.url}/readyz").status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.05)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{server.log_tail()}")


def stop_server(server: Server, grace: float = 30.0) -> None:
    """SIGTERM (uvicorn drains and shuts down), then SIGKILL after ``grace`` seconds."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def run_server(model_dir: Path, mode: str, args: argparse.Namespace) -> Iterator[Server]:
    """Start the service for ``model_dir`` in batching ``mode``; stop it on exit."""
    port = free_port()
    log_path = CACHE / "logs" / f"{slug(model_dir)}-{mode}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port)] + ([] if args.access_log else ["--no-access-log"])
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(model_dir, mode, args.server_env),
            stdout=log,
            stderr=log,
            preexec_fn=pin_to(args.server_cpus),
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        server.ready_s = round(wait_ready(server, started, args.ready_timeout), 2)
        yield server
    finally:
        stop_server(server)


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in Prometheus text (0 if absent)."""
    match = re.search(rf"^{re.escape(name)}\s+(\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def batch_counters(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(catdog_batch_size_sum, catdog_batch_size_count) from GET /metrics."""
    text = (await client.get(f"{url}/metrics")).text
    total, count = (metric_value(text, f"catdog_batch_size_{part}") for part in ("sum", "count"))
    return total, count


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """What C clients saw in one measured window."""

    clients: int
    duration: float
    ok_in_window: int = 0
    latencies_ok: list[float] = field(default_factory=list)
    latencies_by_group: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    socket_errors: int = 0
    timeouts: int = 0
    error_samples: list[str] = field(default_factory=list)
    batch_sum: float = 0.0
    batch_count: float = 0.0
    server_cores: float | None = None  # CPU the server used over the window, in cores
    client_cores: float | None = None  # the same for this load generator

    def record(
        self, start: float, end: float, outcome: int | str, window_end: float, group: str = ""
    ) -> None:
        """Count one request started in the window."""
        if outcome == "timeout":
            self.timeouts += 1
        elif isinstance(outcome, str):
            self.socket_errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(outcome)
        else:
            self.statuses[outcome] += 1
            if outcome == 200:
                self.latencies_ok.append(end - start)
                self.latencies_by_group.setdefault(group, []).append(end - start)
                self.ok_in_window += end <= window_end


async def post_image(client: httpx.AsyncClient, url: str, image: tuple[str, bytes]) -> int | str:
    """POST one image; the HTTP status, ``"timeout"`` or a transport error's description."""
    name, data = image
    try:
        response = await client.post(url, files={"file": (name, data, "image/jpeg")})
    except httpx.TimeoutException:
        return "timeout"
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return response.status_code


async def closed_loop_client(
    client: httpx.AsyncClient,
    url: str,
    images: ImageSet,
    rng: random.Random,
    window: tuple[float, float],
    result: LoadResult,
) -> None:
    """Send one request after another until the window ends; record those started in it."""
    window_start, window_end = window
    while time.perf_counter() < window_end:
        group, image = images.pick_in_group(rng)
        start = time.perf_counter()
        outcome = await post_image(client, url, image)
        if start >= window_start:
            result.record(start, time.perf_counter(), outcome, window_end, group)


async def run_load(
    server: Server, images: ImageSet, clients: int, args: argparse.Namespace
) -> LoadResult:
    """Warm up, then measure ``clients`` closed-loop clients for ``args.duration`` seconds."""
    result = LoadResult(clients, args.duration)
    # One single-connection client each: a shared pool of 256 connections costs httpx
    # time per request that grows with the pool, and the load generator became the
    # bottleneck (a core at 100% while the server idled).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(args.timeout)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=timeout))
            for _ in range(clients)
        ]
        side = await stack.enter_async_context(httpx.AsyncClient(timeout=timeout))
        window_start = time.perf_counter() + args.warmup
        window = (window_start, window_start + args.duration)
        tasks = [
            closed_loop_client(
                pool[i],
                f"{server.url}/predict",
                images,
                random.Random(args.seed * 7919 + i),
                window,
                result,
            )
            for i in range(clients)
        ]
        load = asyncio.gather(*tasks)
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        started = time.perf_counter()
        server_cpu, client_cpu = cpu_seconds(server.process.pid), time.process_time()
        before = await batch_counters(side, server.url)
        await load
        after = await batch_counters(side, server.url)
        elapsed = time.perf_counter() - started
        server_after = cpu_seconds(server.process.pid)
        if server_cpu is not None and server_after is not None:
            result.server_cores = (server_after - server_cpu) / elapsed
        result.client_cores = (time.process_time() - client_cpu) / elapsed
    result.batch_sum, result.batch_count = after[0] - before[0], after[1] - before[1]
    return result


def summarize(result: LoadResult) -> dict[str, Any]:
    """The row of numbers reported for one load level."""
    latencies = np.asarray(result.latencies_ok) * 1000.0
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if latencies.size else (np.nan,) * 3
    statuses = dict(result.statuses)
    return {
        "clients": result.clients,
        "req_per_s": round(result.ok_in_window / result.duration, 2),
        "p50_ms": round(float(p50), 1),
        "p90_ms": round(float(p90), 1),
        "p99_ms": round(float(p99), 1),
        "mean_ms": round(float(latencies.mean()), 1) if latencies.size else None,
        "max_ms": round(float(latencies.max()), 1) if latencies.size else None,
        "ok_in_window": result.ok_in_window,
        "ok": statuses.get(200, 0),
        "status_503": statuses.get(503, 0),
        "other_status": sum(n for s, n in statuses.items() if s not in (200, 503)),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "socket_errors": result.socket_errors,
        "timeouts": result.timeouts,
        "error_samples": result.error_samples,
        "by_image": {
            group: {
                "ok": len(values),
                "p50_ms": round(float(np.percentile(values, 50)) * 1000.0, 1),
                "p99_ms": round(float(np.percentile(values, 99)) * 1000.0, 1),
            }
            for group, values in result.latencies_by_group.items()
        },
        "mean_batch": round(result.batch_sum / result.batch_count, 2)
        if result.batch_count
        else None,
        "server_cores": None if result.server_cores is None else round(result.server_cores, 2),
        "client_cores": None if result.client_cores is None else round(result.client_cores, 2),
    }


def bench_service(
    model_dir: Path, mode: str, images: ImageSet, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Start one server and run every client count against it."""
    rows: list[dict[str, Any]] = []
    with run_server(model_dir, mode, args) as server:
        print(f"[{model_dir} batching {mode}] ready in {server.ready_s:.2f} s", flush=True)
        for clients in args.clients:
            row = summarize(asyncio.run(run_load(server, images, clients, args)))
            row.update(mode=mode, ready_s=server.ready_s, peak_rss_mb=server.peak_rss_mb)
            rows.append(row)
            print(f"  {format_row(row)}", flush=True)
            if server.process.poll() is not None:
                raise RuntimeError(f"server died during the run:\n{server.log_tail()}")
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One load level on one line, for the console."""
    return (
        f"clients={row['clients']:>4}  {row['req_per_s']:8.2f} req/s  p50={row['p50_ms']} "
        f"p90={row['p90_ms']} p99={row['p99_ms']} ms  503={row['status_503']} "
        f"other={row['other_status']} socket={row['socket_errors']} timeouts={row['timeouts']}"
        f"  batch={row['mean_batch']}  rss={row['peak_rss_mb']} MB"
        f"  cpu server={row['server_cores']} client={row['client_cores']} cores"
        "\n      p50/p99 by image: "
        + ", ".join(f"{g} {v['p50_ms']}/{v['p99_ms']} ms" for g, v in row["by_image"].items())
    )


# --------------------------------------------------------------------------- in-process


def measure_in_process(
    model_dir: Path, images: ImageSet, args: argparse.Namespace
) -> dict[str, Any]:
    """Images/s of decode + preprocess + model in this process, per batch size."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from catdog.preprocessing import preprocess
    from catdog.runtimes import latest_version, load_saved_model

    predictor, contract = load_saved_model(latest_version(model_dir))
    size = tuple(contract.image_size)
    workers = os.cpu_count() or 1
    rows = []
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        for batch in args.batch_sizes:
            rng = random.Random(args.seed)

            def decode(n: int = batch, rng: random.Random = rng) -> list[Future]:
                return [pool.submit(preprocess, images.pick(rng)[1], size) for _ in range(n)]

            end_to_end = pipelined_rate(predictor, decode, batch, args.inproc_duration)
            model_only = model_rate(predictor, decode, batch, args.inproc_duration)
            rows.append(
                {"batch": batch, "images_per_s": end_to_end, "model_only_images_per_s": model_only}
            )
            print(
                f"  [{model_dir} in-process] batch {batch:>3}: {end_to_end:8.2f} images/s "
                f"(model only {model_only:8.2f})",
                flush=True,
            )
    return {"decode_threads": workers, "image_size": list(size), "rows": rows}


def measure_in_process_pinned(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``measure_in_process`` in a subprocess pinned to the server's cores."""
    if not args.server_cpus:
        return measure_in_process(model_dir, build_image_set(args), args)
    out = CACHE / "logs" / f"{slug(model_dir)}-inproc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.serve", "--model-dir", str(model_dir)]
    command += ["--images", str(args.images), "--seed", str(args.seed), "--no-pin"]
    command += ["--n-images", str(args.n_images), "--n-medium", str(args.n_medium)]
    command += ["--n-huge", str(args.n_huge), "--mix", ",".join(map(str, args.mix))]
    command += ["--batch-sizes", ",".join(map(str, args.batch_sizes))]
    command += ["--inproc-duration", str(args.inproc_duration), "--inproc-only", str(out)]
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
    return {**after, "rows": rows}


def pipelined_rate(predictor: Any, decode: Any, batch: int, seconds: float) -> float:
    """Images/s when the next batch decodes in the pool while the model runs this one."""
    predictor(np.stack([f.result() for f in decode()]))  # warm-up at this batch size
    pending = decode()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        arrays = np.stack([f.result() for f in pending])
        pending = decode()
        predictor(arrays)
        done += batch
    elapsed = time.perf_counter() - started
    for future in pending:
        future.result()
    return round(done / elapsed, 2)


def model_rate(predictor: Any, decode: Any, batch: int, seconds: float) -> float:
    """Images/s of the model alone on one pre-decoded batch."""
    arrays = np.stack([f.result() for f in decode()])
    predictor(arrays)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor(arrays)
        done += batch
    return round(done / (time.perf_counter() - started), 2)


# --------------------------------------------------------------------------- report


def slug(path: Path) -> str:
    """A file-name-safe name for a model folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(path).strip("/")) or "model"


def model_info(model_dir: Path) -> dict[str, Any]:
    """Version, architecture and input size from the served version's metadata.json."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    latest = max(versions, key=lambda p: int(p.name))
    meta = json.loads((latest / "metadata.json").read_text())
    return {
        "version": latest.name,
        "architecture": meta.get("architecture"),
        "image_size": meta.get("image_size"),
        "parameters": meta.get("parameters"),
    }


def check_model_dir(model_dir: Path) -> None:
    """Fail fast, before anything starts, on a folder the service could not serve."""
    versions = [p for p in model_dir.glob("*/saved_model.pb") if p.parent.name.isdigit()]
    if not versions:
        raise SystemExit(f"{model_dir}: no <version>/saved_model.pb inside")


def cell(value: Any) -> str:
    """A table cell: blanks for missing values."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return str(value)


SERVICE_COLUMNS = [
    ("batching", "mode"),
    ("clients", "clients"),
    ("req/s", "req_per_s"),
    ("p50 ms", "p50_ms"),
    ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"),
    ("503", "status_503"),
    ("other", "other_status"),
    ("socket", "socket_errors"),
    ("timeouts", "timeouts"),
    ("mean batch", "mean_batch"),
    ("server CPU cores", "server_cores"),
    ("client CPU cores", "client_cores"),
    ("peak RSS MB", "peak_rss_mb"),
    ("ready s", "ready_s"),
    ("efficiency", "efficiency"),
]


def table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table of ``rows`` with (header, key) ``columns``."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |"]
    text = {"mode", "target", "goal", "measured", "met"}
    lines.append("|" + "|".join("---" if k in text else "---:" for _, k in columns) + "|")
    lines += ["| " + " | ".join(cell(r.get(k)) for _, k in columns) + " |" for r in rows]
    return lines


def model_section(result: dict[str, Any]) -> list[str]:
    """The markdown for one model: service table, then the in-process table."""
    info, inproc = result["model"], result["in_process"]
    lines = [
        f"## `{result['model_dir']}`",
        "",
        f"Version {info['version']}, {info['architecture']}, input {info['image_size']}, "
        f"{info['parameters']} parameters.",
        "",
        *table(result["service"], SERVICE_COLUMNS),
        "",
    ]
    sized = [
        {"mode": r["mode"], "clients": r["clients"]}
        | {g: f"{v['p50_ms']} / {v['p99_ms']}" for g, v in r["by_image"].items()}
        for r in result["service"]
        if r.get("by_image")
    ]
    if sized:
        groups = [(g, g) for g in GROUPS if any(g in row for row in sized)]
        lines += ["p50 / p99 ms by image size:", ""]
        lines += [*table(sized, [("batching", "mode"), ("clients", "clients"), *groups]), ""]
    if inproc:
        best = inproc["best"]
        lines += [
            f"In-process limit (decode + preprocess on {inproc['decode_threads']} threads, "
            "overlapped with the model): "
            f"**{best['images_per_s']} images/s** at batch {best['batch']}"
            + (
                f" (mean of {best['before']} before and {best['after']} after the service runs)."
                if "before" in best
                else "."
            ),
            "",
            *table(
                inproc["rows"],
                [
                    ("batch", "batch"),
                    ("before", "before"),
                    ("after", "after"),
                    ("images/s", "images_per_s"),
                    ("model only images/s", "model_only_images_per_s"),
                ],
            ),
            "",
        ]
    if checks := result.get("targets"):
        lines += ["Targets (the issue sets them for `article-3`):", ""]
        lines += table(
            [{**c, "met": "yes" if c["met"] else "**no**"} for c in checks],
            [("target", "target"), ("goal", "goal"), ("measured", "measured"), ("met", "met")],
        )
        lines.append("")
    if reach := result.get("p99_reach"):
        lines += [
            f"What p99 batching on could reach at {reach['clients']} clients: the tail above "
            f"the mean (p99 - mean) was {reach['tail_on_ms']} ms on, {reach['tail_off_ms']} ms "
            f"off. At 100% of the in-process limit the mean would be "
            f"{reach['mean_at_limit_ms']} ms, so p99 about {reach['p99_at_limit_ms']} ms = "
            f"**{reach['ratio_at_limit']:.2f}x** batching off's. p99 <= 0.6x needs "
            f"{reach['needed_req_per_s']} req/s, **{reach['needed_share']:.0%}** of the limit.",
            "",
        ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown."""
    mix = ", ".join(
        f"{g} {d['weight']:.0%} ({d['files']} files, {d['mean_kb']} KB mean)"
        for g, d in report["images"].items()
    )
    env = report["environment"]
    lines = [
        "# Serving benchmark",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"{report['started']}; {env['cpus']} CPUs ({env['pinning']}), load average at start "
        f"{env['loadavg_start']}, at end {env.get('loadavg_end')}; "
        f"{report['settings']['warmup']} s warm-up then "
        f"{report['settings']['duration']} s per client count; request mix: {mix}.",
        "",
        "req/s counts 200 answers completed in the window; latencies are of 200 answers; "
        "peak RSS is the server's high-water mark since start; efficiency = req/s / "
        "in-process best images/s. See `bench/serve.py` for details.",
        "",
    ]
    for result in report["models"]:
        lines += model_section(result)
    return "\n".join(lines)


def add_efficiency(result: dict[str, Any]) -> None:
    """Pick the in-process best and give each service row its efficiency."""
    inproc = result["in_process"]
    if not inproc:
        return
    inproc["best"] = max(inproc["rows"], key=lambda r: r["images_per_s"])
    best = inproc["best"]["images_per_s"]
    for row in result["service"]:
        row["efficiency"] = f"{row['req_per_s'] / best:.0%}" if best else None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for one model, with what was measured (skips missing rows)."""
    rows = {(r["mode"], r["clients"]): r for r in result["service"]}
    on64, off64 = rows.get(("on", 64)), rows.get(("off", 64))
    on1, off1 = rows.get(("on", 1)), rows.get(("off", 1))
    best = (result.get("in_process") or {}).get("best", {}).get("images_per_s")
    checks: list[dict[str, Any]] = []

    def check(name: str, goal: str, measured: str, ok: bool) -> None:
        checks.append({"target": name, "goal": goal, "measured": measured, "met": ok})

    if on64 and off64:
        ratio = on64["req_per_s"] / off64["req_per_s"] if off64["req_per_s"] else float("inf")
        check("64 clients: throughput vs batching off", ">= 1.4x", f"{ratio:.2f}x", ratio >= 1.4)
        p99 = on64["p99_ms"] / off64["p99_ms"] if off64["p99_ms"] else float("inf")
        check("64 clients: p99 vs batching off", "<= 0.6x", f"{p99:.2f}x", p99 <= 0.6)
    if on64 and best:
        share = on64["req_per_s"] / best
        check("64 clients: share of the in-process limit", ">= 85%", f"{share:.0%}", share >= 0.85)
    if on1 and off1:
        check(
            "1 client: p50 vs batching off",
            "no worse",
            f"{on1['p50_ms']} vs {off1['p50_ms']} ms",
            on1["p50_ms"] <= off1["p50_ms"] * 1.05 + 0.5,  # within noise: 5% + 0.5 ms
        )
    ready = max(r["ready_s"] for r in result["service"])
    check("ready after start", "<= 5 s", f"{ready} s (slowest start)", ready <= 5.0)
    for mode in ("on", "off"):
        if row := rows.get((mode, 256)):
            check(
                f"256 clients, batching {mode}: socket errors",
                "0, p99 bounded",
                f"{row['socket_errors']} socket errors, {row['status_503']} 503s, "
                f"p99 {row['p99_ms']} ms",
                row["socket_errors"] == 0 and row["timeouts"] == 0,
            )
    return checks


def p99_reach(result: dict[str, Any], clients: int = 64) -> dict[str, Any] | None:
    """What p99 ratio batching on could reach at 100% of the in-process limit.

    With C closed-loop clients and a saturated server, the mean latency is C / req/s
    (Little's law); the tail above the mean (p99 - mean) comes from how much work
    the requests ahead happen to carry (12 MP decodes, machine noise) and is about
    the same in both modes. So the best p99 at the limit is C / limit + that tail,
    and the p99 target needs a mean of (0.6 x p99 off) - tail, i.e. C / that req/s.
    """
    rows = {(r["mode"], r["clients"]): r for r in result["service"]}
    on, off = rows.get(("on", clients)), rows.get(("off", clients))
    best = (result.get("in_process") or {}).get("best", {}).get("images_per_s")
    if not (on and off and best and on.get("mean_ms") and off.get("mean_ms")):
        return None
    tail_on, tail_off = on["p99_ms"] - on["mean_ms"], off["p99_ms"] - off["mean_ms"]
    mean_at_limit = clients / best * 1000.0
    needed_mean = 0.6 * off["p99_ms"] - tail_on
    needed_rate = clients / needed_mean * 1000.0 if needed_mean > 0 else float("inf")
    return {
        "clients": clients,
        "tail_on_ms": round(tail_on, 1),
        "tail_off_ms": round(tail_off, 1),
        "mean_at_limit_ms": round(mean_at_limit, 1),
        "p99_at_limit_ms": round(mean_at_limit + tail_on, 1),
        "ratio_at_limit": round((mean_at_limit + tail_on) / off["p99_ms"], 3),
        "needed_req_per_s": round(needed_rate, 1),
        "needed_share": round(needed_rate / best, 3),
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    """The markdown at ``out``, the raw numbers as JSON beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(report) + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    """``"1,16,64"`` -> ``[1, 16, 64]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def float_list(text: str) -> list[float]:
    """``"0.78,0.2,0.02"`` -> ``[0.78, 0.2, 0.02]``."""
    return [float(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=model_dir_arg, required=True, help="model base folder")
    p.add_argument(
        "--model-dir2",
        type=model_dir_arg,
        help="a second model base folder, or untrained:ARCH (e.g. untrained:article-3)",
    )
    p.add_argument("--clients", type=int_list, default=[1, 16, 64, 256], help="e.g. 1,16,64")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    p.add_argument("--modes", default="on,off", help="batching modes: on,off")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server (repeatable), e.g. CATDOG_BATCH_TIMEOUT_MS=20",
    )
    p.add_argument("--images", type=Path, default=Path("data/split/test"))
    p.add_argument("--n-images", type=int, default=200, help="original photos used")
    p.add_argument("--n-medium", type=int, default=50, help="480x320 versions made")
    p.add_argument("--n-huge", type=int, default=4, help="12MP (4000x3000) versions made")
    p.add_argument(
        "--mix",
        type=float_list,
        default=[0.78, 0.20, 0.02],
        help="request share of original,480x320,12MP images",
    )
    p.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32, 64], help="in-process")
    p.add_argument(
        "--inproc-duration",
        type=float,
        default=None,
        help="seconds per in-process measurement (default: duration/4, within 1..10)",
    )
    p.add_argument("--no-inproc", action="store_true", help="skip the in-process limit")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="startup timeout, s")
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uvicorn access log (on, as in `make serve`)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="client on the first core, server and in-process limit on the others",
    )
    p.add_argument("--inproc-only", type=Path, help=argparse.SUPPRESS)  # internal: JSON path
    p.add_argument("--out", type=Path, default=Path("bench/results/serve.md"))
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(args.modes) - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}; choose from {sorted(MODES)}")
    if len(args.mix) != len(GROUPS) or min(args.mix) < 0 or sum(args.mix) <= 0:
        p.error(f"--mix needs {len(GROUPS)} non-negative shares ({','.join(GROUPS)})")
    args.mix = [m / sum(args.mix) for m in args.mix]
    if args.inproc_duration is None:
        args.inproc_duration = min(10.0, max(1.0, args.duration / 4))
    args.client_cpus, args.server_cpus = split_cpus(args.pin)
    return args


def model_dir_arg(text: str) -> Path:
    """A model base folder; ``untrained:ARCH`` exports one first (see ``bench.models``)."""
    if text.startswith("untrained:"):
        from bench.models import export_untrained

        return export_untrained(text.split(":", 1)[1])
    return Path(text)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine may be busy with other work)."""
    return [round(x, 2) for x in os.getloadavg()]


def command_line(argv: Sequence[str]) -> str:
    """How this run was started, as one shell line."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else "python"
    return shlex.join([python, "-m", "bench.serve", *argv])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.inproc_only:  # the pinned subprocess of measure_in_process_pinned
        result = measure_in_process(args.model_dir, build_image_set(args), args)
        args.inproc_only.write_text(json.dumps(result))
        return
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    model_dirs = [d for d in (args.model_dir, args.model_dir2) if d is not None]
    for model_dir in model_dirs:
        check_model_dir(model_dir)
    report: dict[str, Any] = {
        "command": command_line(argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "cpus": os.cpu_count(),
            "pinning": (
                f"client on CPU {sorted(args.client_cpus)}, "
                f"server on CPU {sorted(args.server_cpus)}"
                if args.server_cpus
                else "not pinned: client and server share the cores"
            ),
            "loadavg_start": loadavg(),
        },
        "settings": {
            k: sorted(v) if isinstance(v, set) else v
            for k, v in vars(args).items()
            if k not in ("model_dir", "model_dir2")
        },
    }
    print(report["command"], flush=True)
    images = build_image_set(args)
    report["images"] = images.describe()
    print(f"images: {report['images']}", flush=True)
    # The limit is measured before and after the services (none running either time):
    # this machine's speed drifts over minutes, and the mean stands for the time between.
    before = {d: None if args.no_inproc else measure_in_process_pinned(d, args) for d in model_dirs}
    results = []
    for model_dir in model_dirs:
        rows = [row for mode in args.modes for row in bench_service(model_dir, mode, images, args)]
        results.append(
            {
                "model_dir": str(model_dir),
                "model": model_info(model_dir),
                "service": rows,
                "in_process": None,
            }
        )
    for result, model_dir in zip(results, model_dirs):  # every server is stopped by now
        if not args.no_inproc:
            after = measure_in_process_pinned(model_dir, args)
            result["in_process"] = combine_in_process(before[model_dir], after)
        add_efficiency(result)
        result["targets"] = targets(result)
        result["p99_reach"] = p99_reach(result)
    report["models"] = results
    report["environment"]["loadavg_end"] = loadavg()
    write_report(report, args.out)
    print("\n" + render_markdown(report), flush=True)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
