"""A client with many connections beside a client with one: the one's latency, with and
without a share per client (``CATDOG_MAX_IMAGES_PER_CLIENT``).

Each server is a fresh ``python -m app`` with the shipped model (LiteRT) and the
default settings but that one. Two clients post photos (multipart ``/predict``) in
a closed loop, from two loopback addresses, so the service tells them apart:

* ``greedy``: ``--greedy`` connections from 127.0.0.1; after a 503 a connection
  waits the ``Retry-After`` seconds, as a well-behaved client does;
* ``polite``: one connection from 127.0.0.2.

After a warm-up, one measured window. Reported per server and client: answers per
second, latency p50 and p99 of the answers, and 503s per second. The load generator
shares the 2 cores with the server: compare rows with each other.

    python -m bench.fairness --greedy 48 --limits 0,8,16 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench import harness
from bench.clients import Body, http_body, photo_files
from bench.harness import (
    CACHE,
    ints,
    markdown,
    new_report,
    table,
    uvicorn_server,
    write_report,
)
from bench.protocols import SPLIT_TEST, Window

CLIENTS = {"greedy": "127.0.0.1", "polite": "127.0.0.2"}


async def connection(
    url: str, address: str, bodies: list[Body], start: int, until: float, window: Window
) -> None:
    """One connection from ``address``: post, wait for the answer, repeat; after a 503
    wait its ``Retry-After``."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=120) as client:
        turn = start
        while time.perf_counter() < until:
            path, content, headers = bodies[turn % len(bodies)]
            turn += 1
            sent = time.perf_counter()
            response = await client.post(path, content=content, headers=headers)
            done = time.perf_counter()
            if done > until:
                break
            if response.status_code == 200:
                window.latencies.append(done - sent)
                continue
            window.statuses[str(response.status_code)] += 1
            if response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))


async def measure(
    url: str, bodies: list[Body], greedy: int, warmup: float, duration: float
) -> dict[str, Window]:
    """A warm-up, then one window in which both clients run."""
    for seconds in (warmup, duration):
        until = time.perf_counter() + seconds
        windows = {
            name: Window(name, 1 if name == "polite" else greedy, seconds) for name in CLIENTS
        }
        await asyncio.gather(
            *(
                connection(url, CLIENTS[name], bodies, i, until, windows[name])
                for name in CLIENTS
                for i in range(windows[name].clients)
            )
        )
    return windows


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = harness.parser("fairness", __doc__, "fairness.md")
    p.add_argument("--images", type=Path, default=SPLIT_TEST)
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of the window")
    p.add_argument("--greedy", type=int, default=48, help="the greedy client's connections")
    p.add_argument("--limits", type=ints, default=[0, 8, 16], help="CATDOG_MAX_IMAGES_PER_CLIENT")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Each limit in turn on a fresh server; write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    photos = [f.read_bytes() for f in photo_files(args.images, args.n_images)]
    bodies = [http_body("predict", "files", [i], (photos, None)) for i in range(len(photos))]
    size = sum(len(content) for _, content, _ in bodies) / len(bodies)
    report = new_report("bench.fairness", argv, greedy_connections=args.greedy)
    rows: list[dict[str, object]] = []
    for limit in args.limits:
        log = CACHE / "fairness" / f"limit-{limit}.log"
        settings = {"max_files_per_request": min(limit, 32)} if limit else {}
        with uvicorn_server(
            args.model_dir, log, runtime="litert", max_images_per_client=limit, **settings
        ) as server:
            windows = asyncio.run(
                measure(server.url, bodies, args.greedy, args.warmup, args.duration)
            )
        for window in windows.values():
            row = window.row(size)
            refused = window.statuses.get("503", 0)
            rows.append(
                {
                    "limit": limit or "none",
                    **row,
                    "refused_per_s": round(refused / window.duration, 1),
                }
            )
            print(rows[-1], flush=True)
    report["rows"] = rows
    write_report(report, render(report), args.out)


def render(report: dict[str, object]) -> str:
    """The markdown report."""
    environment = report["environment"]
    assert isinstance(environment, dict)
    columns = [
        ("images per client", "limit"),
        ("client", "protocol"),
        ("connections", "clients"),
        ("answers/s", "rps"),
        ("p50 ms", "p50"),
        ("p99 ms", "p99"),
        ("503/s", "refused_per_s"),
    ]
    rows = report["rows"]
    assert isinstance(rows, list)
    about = (
        f"{report['started']}, {environment['cpus']} cores (server and load generator"
        " share them), LiteRT, closed loop, a 503 waited out for its Retry-After; one"
        f" run; load average at start {environment['loadavg_start']}."
    )
    title = "Fairness: a client with many connections beside a client with one"
    return markdown(title, report, about, table(rows, columns, text=("limit", "protocol")))


if __name__ == "__main__":
    main()
