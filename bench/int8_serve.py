"""``python -m bench.int8_serve``: the int8 version against version 4 and a naive server.

One run, four servers up at once, each client count against each in turn (in
the opposite order at the next count, as ``bench.serve`` does), with
``bench.serve``'s options for the load (clients, duration, request mix, pinning):

* ``v5 litert``: the service serving the newest version (``--model-dir``) with
  its defaults (plus ``--server-env``);
* ``v4 litert``: the same, ``CATDOG_VERSION_POLICY=specific:<--old>``;
* ``v5 tensorflow``: the same as the first, ``CATDOG_RUNTIME=tensorflow``;
* ``naive, tensorflow``: ``bench.naive_server`` on the newest version's SavedModel.

The report gives req/s, p50 and p99 (to 0.01 ms), peak RSS, and for the
catdog servers their own mean time per ``/predict`` request and per model call
(from ``/metrics``, over the same window) per server and client count; each
server's ready time and idle RSS; and the targets of the int8 version with what
was measured.

    .venv/bin/python -m bench.int8_serve --model-dir models/catdog --no-pin \\
        --clients 1,64 --duration 20 --mix 0,1,0 --out bench/results/int8-serve.md
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.harness import (
    CACHE,
    ROOT,
    Server,
    free_port,
    markdown,
    new_report,
    pin_to,
    proc_status_kb,
    read_metrics,
    server_env,
    start_uvicorn,
    stop,
    table,
    value,
    wait_ready,
    write_report,
)
from bench.serve import parse_args
from bench.serve_images import build_image_set
from bench.serve_load import LoadResult, run_load, summarize
from catdog.runtimes import latest_version

_REQUEST, _MODEL = "catdog_request_duration_seconds", "catdog_inference_seconds"


def _options(p: Any) -> None:
    p.add_argument("--old", type=int, default=4, help="the version to compare against")


def start_naive(version_dir: Path, args: Any) -> Server:
    """``bench.naive_server`` on ``version_dir`` (uvicorn's defaults, access log on)."""
    port = free_port()
    log_path = CACHE / "logs" / "naive-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "uvicorn", "bench.naive_server:app"]
    env = server_env(version_dir.parent) | {"CATDOG_NAIVE_MODEL": str(version_dir)}
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=pin_to(args.server_cpus),
        )  # fmt: skip
    return Server(process, port, log_path, started)


@contextlib.contextmanager
def servers(args: Any) -> Iterator[dict[str, tuple[Server, float | None]]]:
    """The four servers, each started and timed while the others idle; stopped after."""
    newest = latest_version(args.model_dir)
    plans = {
        f"v{newest.name} litert": {"CATDOG_RUNTIME": "litert"},
        f"v{args.old} litert": {
            "CATDOG_RUNTIME": "litert",
            "CATDOG_VERSION_POLICY": f"specific:{args.old}",
        },
        f"v{newest.name} tensorflow": {"CATDOG_RUNTIME": "tensorflow"},
    }
    extra = {k: v for k, _, v in (item.partition("=") for item in args.server_env)}
    up: dict[str, tuple[Server, float | None]] = {}
    try:
        for name, env in plans.items():
            log = CACHE / "logs" / f"int8-{name.replace(' ', '-')}.log"
            server = start_uvicorn(
                args.model_dir, log, env=extra | env, cpus=args.server_cpus,
                access_log=args.access_log,
            )  # fmt: skip
            up[name] = server, None
            wait_ready(server, args.ready_timeout)
            up[name] = server, _rss(server)
            print(f"[{name}] ready in {server.ready_s:.2f} s, RSS {up[name][1]} MB", flush=True)
        server = start_naive(newest, args)
        up["naive, tensorflow"] = server, None
        wait_ready(server, args.ready_timeout)
        up["naive, tensorflow"] = server, _rss(server)
        print(f"[naive] ready in {server.ready_s:.2f} s, RSS {up['naive, tensorflow'][1]} MB")
        yield up
    finally:
        for server, _ in up.values():
            stop(server)


def _rss(server: Server) -> float | None:
    kb = proc_status_kb(server.process.pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def fine_percentiles(result: LoadResult) -> dict[str, float | None]:
    """p50 and p99 in ms to 0.01 (``summarize`` gives 0.1): at 1 client a request takes
    3-6 ms, where 0.1 ms moves the ratio of two p50s by up to 0.02."""
    ok = [x for values in result.latencies_by_group.values() for x in values]
    if not ok:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(ok, [50, 99]) * 1000.0
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


async def served_times(server: Server, window: tuple[float, float]) -> dict[str, Any]:
    """The server's own means over the window (``/metrics``): a ``/predict`` request
    (``server_ms``) and a model call (``model_ms``); nothing from a server without them."""
    start, end = window
    async with httpx.AsyncClient(timeout=60.0) as client:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = await _times(client, server)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after = await _times(client, server)
    means: dict[str, Any] = {}
    for key, (total, count) in after.items():
        if key not in before:
            continue
        calls = count - before[key][1]
        means[key] = round((total - before[key][0]) / calls * 1000.0, 2) if calls else None
    return means


async def _times(client: httpx.AsyncClient, server: Server) -> dict[str, tuple[float, float]]:
    """(sum, count) of the two histograms ``served_times`` reads; empty when absent."""
    try:
        metrics = await read_metrics(client, server.url)
        times = {}
        for key, name, labels in (
            ("server_ms", _REQUEST, {"route": "/predict"}),
            ("model_ms", _MODEL, {}),
        ):
            times[key] = (
                value(metrics, f"{name}_sum", **labels),
                value(metrics, f"{name}_count", **labels),
            )
        return times
    except (httpx.HTTPError, KeyError):  # the naive server has no such metrics
        return {}


def measure(args: Any) -> list[dict[str, Any]]:
    """One row per server and client count."""
    images = build_image_set(args)
    rows = []
    with servers(args) as up:
        for level, clients in enumerate(args.clients):
            for name in list(up)[:: -1 if level % 2 else 1]:
                server, idle = up[name]
                result = asyncio.run(run_load(server, images, clients, args, probe=served_times))
                row = summarize(result)
                row.update(fine_percentiles(result), **(result.probe or {}))
                row.pop("probe", None)
                row.update(server=name, ready_s=server.ready_s, idle_rss_mb=idle)
                row.update(peak_rss_mb=server.peak_rss_mb)
                rows.append(row)
                print(
                    f"  [{name}] {clients} clients: {row['req_per_s']} req/s, "
                    f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms",
                    flush=True,
                )
    return rows


def targets(rows: list[dict[str, Any]], new: str, old: int) -> list[dict[str, Any]]:
    """The int8 version's targets with what was measured."""
    at = {(r["server"], r["clients"]): r for r in rows}
    mine, v4 = f"v{new} litert", f"v{old} litert"
    tf, naive = f"v{new} tensorflow", "naive, tensorflow"

    def ratio(a: str, b: str, clients: int, key: str) -> float | None:
        x, y = at.get((a, clients)), at.get((b, clients))
        return None if not x or not y or not y[key] else round(x[key] / y[key], 2)

    first = next(r for r in rows if r["server"] == mine)
    checks = [
        (f"64 clients: req/s vs v{old}", ratio(mine, v4, 64, "req_per_s"), ">=", 1.7),
        ("64 clients: req/s vs naive", ratio(mine, naive, 64, "req_per_s"), ">=", 2.5),
        ("64 clients: p99 vs naive", ratio(mine, naive, 64, "p99_ms"), "<=", 0.4),
        (f"1 client: p50 vs v{old}", ratio(mine, v4, 1, "p50_ms"), "<=", 0.6),
        ("ready, s", first["ready_s"], "<=", 1.0),
        ("idle RSS, MB", first["idle_rss_mb"], "<=", 250),
        ("64 clients: LiteRT / TensorFlow req/s", ratio(mine, tf, 64, "req_per_s"), ">=", 1.5),
    ]
    return [
        {
            "target": name,
            "measured": value,
            "goal": f"{sign} {goal}",
            "met": None if value is None else (value >= goal if sign == ">=" else value <= goal),
        }
        for name, value, sign, goal in checks
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Run, print and write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, extend=_options, prog="bench.int8_serve", description=__doc__)
    report = new_report("bench.int8_serve", argv)
    report["rows"] = measure(args)
    new = latest_version(args.model_dir).name
    report["targets"] = targets(report["rows"], new, args.old)
    columns = [
        ("server", "server"),
        ("clients", "clients"),
        ("req/s", "req_per_s"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("server ms", "server_ms"),
        ("model call ms", "model_ms"),
        ("mean batch", "mean_batch"),
        ("server cores", "server_cores"),
        ("other cores", "other_cores"),
        ("peak RSS MB", "peak_rss_mb"),
        ("idle RSS MB", "idle_rss_mb"),
        ("ready s", "ready_s"),
    ]
    body = table(report["rows"], columns, text=("server",))
    body += [
        "",
        *table(
            report["targets"],
            [(k, k) for k in ("target", "measured", "goal", "met")],
            text=("target", "goal"),
        ),
    ]
    pinning = "pinned" if args.server_cpus else "not pinned"
    about = (
        f"{report['started']}; {report['environment']['cpus']} CPUs, {pinning}; "
        f"{args.duration:g} s per level after {args.warmup:g} s warm-up; mix {args.mix} "
        "(original, 480x320, 12MP)."
    )
    write_report(report, markdown("The int8 version in the service", report, about, body), args.out)


if __name__ == "__main__":
    main()
