"""Goodput under overload: many keep-alive connections that retry a refusal at once, or later.

Per connection count and client kind (``retry``: a 503 retried at once, as wrk does;
``honour``: sleep ``Retry-After`` first), that many connections each post 480x320 photos
to ``/predict`` one after another, with a lean asyncio client (requests pre-encoded,
answers read by status line and ``Content-Length``) so thousands of refusals a second do
not make the load generator the bottleneck; by default on the first core, the server on
the others. bench/README.md has the columns.

    .venv/bin/python -m bench overload --connections 64,256,512 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness
from bench.clients import request_for
from bench.harness import CACHE, Server, ints, table
from bench.serve_images import cached_variant, sample_photos
from bench.serve_load import cores, cpu_now, percentiles

KINDS = ("retry", "honour")
CONNECT_TIMEOUT = 30.0


def encode_request(photo: bytes) -> bytes:
    """One ``POST /predict`` with ``photo`` as multipart field ``file``, ready to write."""
    path, headers, body = request_for("predict", [photo])
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n".encode() + body


@dataclass
class Window:
    """What the connections saw between ``start`` and ``end`` (perf_counter seconds)."""

    start: float
    end: float
    ok_latency: list[float] = field(default_factory=list)
    journey: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    def inside(self, t: float) -> bool:
        """Whether an answer at ``t`` counts."""
        return self.start <= t < self.end


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and (lower-cased) headers of one response; its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers


async def connection(
    port: int, requests: list[bytes], kind: str, window: Window, seed: int
) -> None:
    """One client connection until the window ends (reconnecting after errors)."""
    rng = random.Random(seed)
    writer: asyncio.StreamWriter | None = None
    first_try: float | None = None
    request = rng.choice(requests)
    while time.perf_counter() < window.end:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT
                )
            sent = time.perf_counter()
            first_try = first_try or sent
            writer.write(request)
            status, headers = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            done = time.perf_counter()
            if window.inside(done):
                window.errors[type(e).__name__] += 1
            if writer is not None:
                writer.close()
                writer = None
            await asyncio.sleep(0.01)  # a refused connect would otherwise spin
            continue
        done = time.perf_counter()
        if window.inside(done):
            window.statuses[status] += 1
            if status == 200:
                window.ok_latency.append(done - sent)
                window.journey.append(done - first_try)
        if status != 503:
            first_try = None
            request = rng.choice(requests)
        elif kind == "honour":
            await asyncio.sleep(float(headers.get("retry-after", "1")))
        if headers.get("connection", "").lower() == "close":
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def run_row(
    server: Server, requests: list[bytes], connections: int, kind: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One connection count and client kind: warm-up, then the measured window."""
    now = time.perf_counter()
    window = Window(now + args.warmup, now + args.warmup + args.duration)
    tasks = [
        asyncio.create_task(connection(server.port, requests, kind, window, seed))
        for seed in range(connections)
    ]
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    before = cpu_now(server)
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    used = cores(before, cpu_now(server))
    await asyncio.gather(*tasks)
    await asyncio.sleep(args.settle)  # let held and queued requests finish
    p50, p99 = percentiles(window.ok_latency, 50, 99)
    others = {s: n for s, n in window.statuses.items() if s not in (200, 503)}
    return {
        "connections": connections,
        "kind": kind,
        "ok_per_s": round(window.statuses[200] / args.duration, 1),
        **{"p50_ms": p50, "p99_ms": p99, "journey_p99_ms": percentiles(window.journey, 99)[0]},
        "refused_per_s": round(window.statuses[503] / args.duration, 1),
        "other": sum(others.values()),
        "other_statuses": others,
        "errors": sum(window.errors.values()),
        "error_kinds": dict(window.errors),
        "server_cores": used["server_cores"],
        "client_cores": used["client_cores"],
    }


def load_requests(args: argparse.Namespace) -> list[bytes]:
    """``--n-images`` 480x320 photos (cached in ``bench/.cache/images``), as requests."""
    photos = sample_photos(args.images, args.n_images, args.seed)
    return [
        encode_request(cached_variant(p, "480x320", args.seed + i)) for i, p in enumerate(photos)
    ]


async def run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Every row against one server."""
    requests = load_requests(args)
    report["n_requests"] = len(requests)
    report["mean_kb"] = round(sum(map(len, requests)) / len(requests) / 1024, 1)
    client_cpus, server_cpus = harness.split_cpus(not args.no_pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    env = dict(item.split("=", 1) for item in args.server_env)
    log = CACHE / "logs" / f"overload-{harness.slug(args.model_dir)}.log"
    with harness.uvicorn_server(args.model_dir, log, cpus=server_cpus, env=env) as server:
        for connections in args.connections:
            for kind in args.kinds:
                row = await run_row(server, requests, connections, kind, args)
                print(row, flush=True)
                report["rows"].append(row)
    report["server_exit"] = harness.describe_exit(server.process.returncode)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = harness.parser("overload", __doc__, "overload.md")
    add = p.add_argument
    add("--connections", type=ints, default=[64, 256, 512], help="e.g. 64,256,512")
    add("--kinds", default=",".join(KINDS), help="retry,honour")
    add("--duration", type=float, default=10.0, help="measured seconds per row")
    add("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    add("--settle", type=float, default=2.0, help="pause between rows, s")
    add("--images", type=Path, default=Path("data/split/test"))
    add("--n-images", type=int, default=50, help="photos (480x320 versions)")
    add("--seed", type=int, default=0)
    add("--no-pin", action="store_true", help="client and server share every core")
    add("--server-env", action="append", default=[], help="KEY=VALUE, repeatable")
    add("--note", default="", help="a line added under the table")
    args = p.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k.strip()]
    if unknown := set(args.kinds) - set(KINDS):
        p.error(f"unknown client kinds {sorted(unknown)}; choose from {KINDS}")
    return args


COLUMNS = [("connections", "connections"), ("client", "kind"), ("200/s", "ok_per_s")]
COLUMNS += [("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("journey p99 ms", "journey_p99_ms")]
COLUMNS += [("503/s", "refused_per_s"), ("other", "other"), ("errors", "errors")]
COLUMNS += [("server CPU cores", "server_cores"), ("client CPU cores", "client_cores")]


def render(report: dict[str, Any]) -> str:
    """The markdown report."""
    env = report["environment"]
    about = (
        f"{report['started']}; {env['cpus']} CPUs ({env['pinning']}); load average "
        f"{env['loadavg_start']} at start, {env['loadavg_end']} at end; {report['warmup']} s "
        f"warm-up, then {report['duration']} s per row; {report['n_requests']} different "
        f"480x320 photos ({report['mean_kb']} KB mean); server stopped with "
        f"{report['server_exit']}. `retry`: a 503 is retried at once; `honour`: the connection "
        "sleeps `Retry-After` first. p50/p99: one successful attempt; journey: from a photo's "
        "first attempt to its 200."
    )
    body = table(report["rows"], COLUMNS, ("kind",))
    body += ["", report["note"]] if report.get("note") else []
    return harness.markdown("Goodput under overload", report, about, body)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    pinning = "not pinned" if args.no_pin else "client on the first core, server on the others"
    report = harness.new_report("bench.overload", argv, pinning=pinning)
    report.update(rows=[], warmup=args.warmup, duration=args.duration, note=args.note)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run(args, report))
    report["environment"]["loadavg_end"] = harness.loadavg()
    harness.write_report(report, render(report), args.out)


if __name__ == "__main__":
    main()
