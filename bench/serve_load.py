"""Closed-loop load on a real service: C clients each POST one photo after another to ``/predict``.

:func:`bench_servers` starts one server per runtime and batching mode and runs every
client count against each in turn; :func:`run_load` is one client count (a warm-up,
then a measured window: every request's latency and outcome, the batch sizes from
``/metrics``, the CPU of the server, the load generator and the rest of the machine);
:func:`summarize` makes it a report row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import harness
from bench.harness import CACHE, Metrics, Server, read_metrics, uvicorn_server, value
from bench.serve_images import ImageSet

CORES = ("server", "client", "other")  # who used the CPU: the server, this process, the rest
# Settings of each batching mode ("on": the service's defaults).
MODES: dict[str, dict[str, object]] = {"on": {}, "off": {"max_batch_size": 1}}
Send = Callable[[random.Random], Awaitable[tuple[str, int | str]]]  # one request: group, outcome
Client = Callable[[], AbstractAsyncContextManager[Send]]  # opens one client, its own connection
# Watches the server over a measured window (start, end in perf_counter time), e.g. a profiler.
Probe = Callable[[Server, tuple[float, float]], Awaitable[dict[str, Any]]]


@dataclass
class LoadResult:
    """What C clients saw in one measured window."""

    clients: int
    duration: float
    ok_in_window: int = 0
    latencies_by_group: dict[str, list[float]] = field(default_factory=dict)  # of the 200s
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # no status: "timeout", or what failed
    batch_sum: float = 0.0
    batch_count: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)  # server, client, other: cores()
    runtime: str | None = None  # what runs the model, as the server's /metrics say
    probe: dict[str, Any] | None = None  # what a Probe saw over the window

    def record(
        self, start: float, end: float, outcome: int | str, window_end: float, group: str = ""
    ) -> None:
        """Count one request started in the window."""
        if isinstance(outcome, str):
            self.errors[outcome] += 1
            return
        self.statuses[outcome] += 1
        if outcome == 200:
            self.latencies_by_group.setdefault(group, []).append(end - start)
            self.ok_in_window += end <= window_end


def photo_clients(url: str, images: ImageSet, args: argparse.Namespace) -> Client:
    """Clients that post photos drawn from the mix to ``url``, each its own single-connection
    httpx client: in one shared pool of 256 connections httpx's time per request grows with
    the pool, and the load generator became the bottleneck (a core at 100%, the server idle)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    options = {"timeout": httpx.Timeout(args.timeout), "headers": getattr(args, "headers", {})}

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        async with httpx.AsyncClient(limits=limits, **options) as client:

            async def send(rng: random.Random) -> tuple[str, int | str]:
                group, image = images.pick_in_group(rng)
                return group, await post_image(client, url, image)

            yield send

    return opened


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
    send: Send, rng: random.Random, window: tuple[float, float], result: LoadResult
) -> None:
    """Send one request after another until the window ends; record those started in it."""
    window_start, window_end = window
    while time.perf_counter() < window_end:
        start = time.perf_counter()
        group, outcome = await send(rng)
        if start >= window_start:
            result.record(start, time.perf_counter(), outcome, window_end, group)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: all but idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_now(server: Server) -> tuple[float, float, float, float]:
    """(wall clock, server CPU, this process's CPU, all cores' busy time), in seconds."""
    busy = machine_busy_seconds()
    return time.perf_counter(), server.cpu_seconds() or 0.0, time.process_time(), busy


def cores(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """Cores the server, the load generator and anything else used between two
    :func:`cpu_now` (CPU seconds ÷ wall seconds), and the server's CPU seconds."""
    wall, server_s, client_s, busy_s = (b - a for a, b in zip(before, after))
    named = {"server": server_s, "client": client_s, "other": max(busy_s - server_s - client_s, 0)}
    return {"server_s": round(server_s, 3)} | {
        f"{who}_cores": round(seconds / wall, 2) for who, seconds in named.items()
    }


def batch_counters(metrics: Metrics) -> tuple[float, float]:
    """(catdog_batch_size_sum, catdog_batch_size_count) from the server's ``/metrics``."""
    return value(metrics, "catdog_batch_size_sum"), value(metrics, "catdog_batch_size_count")


def served_runtime(metrics: Metrics) -> str | None:
    """The runtime label of the served version (``catdog_model_version``), if it has one."""
    served = [s for s in metrics if s.name == "catdog_model_version" and s.value == 1]
    return served[0].labels.get("runtime") if served else None


async def run_load(
    server: Server,
    images: ImageSet | None,
    clients: int,
    args: argparse.Namespace,
    probe: Probe | None = None,
    opener: Client | None = None,
) -> LoadResult:
    """Warm up, then measure ``clients`` closed-loop clients for ``args.duration`` seconds
    (``probe``, if given, watching the server over the same window); each client from
    ``opener``, by default :func:`photo_clients` posting ``images`` to ``/predict``."""
    result = LoadResult(clients, args.duration)
    if opener is None:
        assert images is not None
        opener = photo_clients(f"{server.url}/predict", images, args)
    async with contextlib.AsyncExitStack() as stack:
        sends = [await stack.enter_async_context(opener()) for _ in range(clients)]
        side = await stack.enter_async_context(httpx.AsyncClient(timeout=60.0))
        window_start = time.perf_counter() + args.warmup
        window = (window_start, window_start + args.duration)
        rngs = [random.Random(args.seed * 7919 + i) for i in range(clients)]
        load = asyncio.gather(*(closed_loop_client(*c, window, result) for c in zip(sends, rngs)))
        watching = asyncio.ensure_future(probe(server, window)) if probe else None
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        before = cpu_now(server)
        metrics = await read_metrics(side, server.url)
        await load
        after = batch_counters(await read_metrics(side, server.url))
        result.cores = cores(before, cpu_now(server))
        result.probe = await watching if watching else None
    before = batch_counters(metrics)
    result.batch_sum, result.batch_count = after[0] - before[0], after[1] - before[1]
    result.runtime = served_runtime(metrics)
    return result


def percentiles(seconds: list[float], *qs: float) -> list[float | None]:
    """The ``qs`` percentiles of ``seconds``, in ms to 0.1 (None when there are none)."""
    if not seconds:
        return [None] * len(qs)
    return [round(float(x) * 1000.0, 1) for x in np.percentile(seconds, qs)]


def summarize(result: LoadResult) -> dict[str, Any]:
    """The row of numbers reported for one load level."""
    ok, statuses = sum(result.latencies_by_group.values(), []), dict(result.statuses)
    p50, p90, p99, top = percentiles(ok, 50, 90, 99, 100)
    by_image = {}
    for group, values in result.latencies_by_group.items():
        g50, g99 = percentiles(values, 50, 99)
        by_image[group] = {"ok": len(values), "p50_ms": g50, "p99_ms": g99}
    return {
        "clients": result.clients,
        "req_per_s": round(result.ok_in_window / result.duration, 2),
        **{"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": top},
        "mean_ms": round(float(np.mean(ok)) * 1000.0, 1) if ok else None,
        "ok_in_window": result.ok_in_window,
        "ok": statuses.get(200, 0),
        "status_503": statuses.get(503, 0),
        "other_status": sum(n for s, n in statuses.items() if s not in (200, 503)),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "socket_errors": sum(result.errors.values()) - result.errors["timeout"],
        "timeouts": result.errors["timeout"],
        "error_samples": [e for e in result.errors if e != "timeout"][:5],
        "by_image": by_image,
        "mean_batch": round(result.batch_sum / calls, 2) if (calls := result.batch_count) else None,
        **{f"{who}_cores": result.cores.get(f"{who}_cores") for who in CORES},
        "runtime": result.runtime,
    } | ({"probe": result.probe} if result.probe else {})


def settings_env(args: argparse.Namespace, runtime: str | None = None) -> dict[str, str]:
    """The server's extra environment: ``--server-env``, then ``CATDOG_RUNTIME=runtime``."""
    env = {key: val for key, _, val in (item.partition("=") for item in args.server_env)}
    return env | ({"CATDOG_RUNTIME": runtime} if runtime else {})


def split_mode(settings: Mapping[str, object]) -> tuple[dict[str, str], dict[str, object]]:
    """A mode's settings as (environment variables, ``CATDOG_`` settings): ``OTEL_*`` names
    are OpenTelemetry's own variables, passed as they are; the rest are the service's."""
    otel = {k.upper(): str(v) for k, v in settings.items() if k.startswith("otel_")}
    return otel, {k.upper(): v for k, v in settings.items() if not k.startswith("otel_")}


Config = tuple[str | None, str]  # (runtime, batching mode) of one server


def bench_servers(
    model_dir: Path,
    configs: Sequence[Config],
    images: ImageSet,
    args: argparse.Namespace,
    probe: Probe | None = None,
) -> dict[Config, list[dict[str, Any]]]:
    """One server per (runtime, batching mode), every client count against each; rows by config.

    Each client count runs ``args.rounds`` times (default 1) against each server in
    turn, the servers' order flipping at every level, so that the machine's drift
    over minutes does not favour one configuration. By default the servers start one
    after the other (each timed while the others idle) and stay up to the end; with
    ``args.fresh`` each one starts right before its level and stops right after, so
    that no server is measured after idling beside the others, and each round's
    servers are new processes.
    """
    rows: dict[Config, list[dict[str, Any]]] = {config: [] for config in configs}
    levels = [(clients, r + 1) for clients in args.clients for r in range(args.rounds)]
    with contextlib.ExitStack() as stack:
        servers = {} if args.fresh else {c: start(stack, model_dir, c, args) for c in configs}
        for level, (clients, round_) in enumerate(levels):
            for config in list(configs)[:: -1 if level % 2 else 1]:
                with contextlib.ExitStack() as own:
                    server, idle_rss_mb = servers.get(config) or start(own, model_dir, config, args)
                    row = summarize(asyncio.run(run_load(server, images, clients, args, probe)))
                    row.update(mode=config[1], requested_runtime=config[0], idle_rss_mb=idle_rss_mb)
                    row.update(ready_s=server.ready_s, peak_rss_mb=server.peak_rss_mb)
                    if args.rounds > 1:
                        row["round"] = round_
                    rows[config].append(row)
                    print(f"  [{label(config)}] {format_row(row)}", flush=True)
                    if server.process.poll() is not None:
                        raise RuntimeError(f"server died during the run:\n{server.log_tail()}")
                if args.fresh:  # its own server, stopped as the block closed
                    row["server_exit"] = harness.describe_exit(server.process.returncode)
                    print(f"[{label(config)}] stopped: {row['server_exit']}", flush=True)
    for config, (server, _) in servers.items():
        stopped = harness.describe_exit(server.process.returncode)
        print(f"[{label(config)}] stopped: {stopped}", flush=True)
        for row in rows[config]:
            row["server_exit"] = stopped
    return rows


def start(
    stack: contextlib.ExitStack, model_dir: Path, config: Config, args: argparse.Namespace
) -> tuple[Server, float | None]:
    """A ready server of ``config``, stopped when ``stack`` closes; its RSS when ready."""
    runtime, mode = config
    otel, settings = split_mode(args.mode_settings[mode])
    env = settings_env(args, runtime) | otel
    log = CACHE / "logs" / f"{harness.slug(model_dir)}-{runtime or 'default'}-{mode}.log"
    server = stack.enter_context(
        uvicorn_server(
            model_dir,
            log,
            ready_timeout=args.ready_timeout,
            env=env,
            cpus=args.server_cpus,
            access_log=args.access_log,
            **settings,
        )  # fmt: skip
    )
    idle_kb = harness.proc_status_kb(server.process.pid, "VmRSS")  # right after /readyz
    idle_rss_mb = None if idle_kb is None else round(idle_kb / 1024, 1)
    if not args.fresh:
        print(f"[{label(config)}] ready in {server.ready_s:.2f} s, RSS {idle_rss_mb} MB")
    return server, idle_rss_mb


def label(config: Config) -> str:
    """``"litert, batching on"``: a server's configuration in words."""
    runtime, mode = config
    return f"{runtime or 'default runtime'}, batching {mode}"


def format_row(row: dict[str, Any]) -> str:
    """One load level on one line, for the console."""
    keys = ("clients", "req_per_s", "p50_ms", "p99_ms", "status_503", "socket_errors")
    keys += ("timeouts", "mean_batch", "peak_rss_mb", "server_cores", "client_cores")
    return "  ".join(f"{k}={row[k]}" for k in (*keys, "other_cores"))
