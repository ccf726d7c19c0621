"""Closed-loop load on a real service: C clients each POST one photo after another to ``/predict``.

:func:`bench_service` starts one server (``bench.harness``) in a batching mode
and runs every client count against it; :func:`run_load` is one client count: a
warm-up, then a measured window in which it records every request's latency and
outcome, the batch sizes the service used (``/metrics``) and the CPU the server
and this load generator spent. :func:`summarize` turns that into a report row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.harness import (
    CACHE,
    Metrics,
    Server,
    describe_exit,
    read_metrics,
    slug,
    uvicorn_server,
    value,
)
from bench.serve_images import ImageSet

# Settings of each batching mode ("on": the service's defaults).
MODES: dict[str, dict[str, object]] = {"on": {}, "off": {"max_batch_size": 1}}


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
    runtime: str | None = None  # what runs the model, as the server's /metrics say

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


def batch_counters(metrics: Metrics) -> tuple[float, float]:
    """(catdog_batch_size_sum, catdog_batch_size_count) from the server's ``/metrics``."""
    return value(metrics, "catdog_batch_size_sum"), value(metrics, "catdog_batch_size_count")


def served_runtime(metrics: Metrics) -> str | None:
    """The runtime label of the served version (``catdog_model_version``), if it has one."""
    served = [s for s in metrics if s.name == "catdog_model_version" and s.value == 1]
    return served[0].labels.get("runtime") if served else None


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
        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        metrics = await read_metrics(side, server.url)
        await load
        after = batch_counters(await read_metrics(side, server.url))
        elapsed = time.perf_counter() - started
        server_after = server.cpu_seconds()
        if server_cpu is not None and server_after is not None:
            result.server_cores = (server_after - server_cpu) / elapsed
        result.client_cores = (time.process_time() - client_cpu) / elapsed
    before = batch_counters(metrics)
    result.batch_sum, result.batch_count = after[0] - before[0], after[1] - before[1]
    result.runtime = served_runtime(metrics)
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
        "runtime": result.runtime,
    }


def bench_service(
    model_dir: Path, mode: str, images: ImageSet, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Start one server in batching ``mode`` and run every client count against it."""
    rows: list[dict[str, Any]] = []
    env = {key: val for key, _, val in (item.partition("=") for item in args.server_env)}
    with uvicorn_server(
        model_dir,
        CACHE / "logs" / f"{slug(model_dir)}-{mode}.log",
        ready_timeout=args.ready_timeout,
        env=env,
        cpus=args.server_cpus,
        access_log=args.access_log,
        **MODES[mode],
    ) as server:
        print(f"[{model_dir} batching {mode}] ready in {server.ready_s:.2f} s", flush=True)
        for clients in args.clients:
            row = summarize(asyncio.run(run_load(server, images, clients, args)))
            row.update(mode=mode, ready_s=server.ready_s, peak_rss_mb=server.peak_rss_mb)
            rows.append(row)
            print(f"  {format_row(row)}", flush=True)
            if server.process.poll() is not None:
                raise RuntimeError(f"server died during the run:\n{server.log_tail()}")
    stopped = describe_exit(server.process.returncode)
    print(f"[{model_dir} batching {mode}] stopped: {stopped}", flush=True)
    for row in rows:
        row["server_exit"] = stopped
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
