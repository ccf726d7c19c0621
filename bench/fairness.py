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
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import harness
from bench.clients import http_body, http_opener, photo_files
from bench.harness import CACHE, ints, markdown, new_report, table, uvicorn_server, write_report
from bench.protocols import SPLIT_TEST, Window, send_until

CLIENTS = {"greedy": "127.0.0.1", "polite": "127.0.0.2"}


async def measure(url: str, bodies: list, greedy: int, warmup: float, duration: float) -> dict:
    """A warm-up, then one window in which both clients run, each connection posting one
    photo after another and waiting out a 503's ``Retry-After``."""
    for seconds in (warmup, duration):
        until = time.perf_counter() + seconds
        windows = {
            name: Window(name, greedy if name == "greedy" else 1, seconds) for name in CLIENTS
        }
        async with contextlib.AsyncExitStack() as stack:
            opened = [
                (
                    await stack.enter_async_context(
                        http_opener(url, "predict", bodies, CLIENTS[name])()
                    ),
                    name,
                )
                for name in CLIENTS
                for _ in range(windows[name].clients)
            ]
            await asyncio.gather(
                *(
                    send_until(send, i, until, windows[name], wait=True)
                    for i, (send, name) in enumerate(opened)
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


COLUMNS = [("images per client", "limit"), ("client", "protocol"), ("connections", "clients")]
COLUMNS += [("answers/s", "rps"), ("p50 ms", "p50"), ("p99 ms", "p99"), ("503/s", "refused_per_s")]


def main(argv: Sequence[str] | None = None) -> None:
    """Each limit in turn on a fresh server; write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    photos = [f.read_bytes() for f in photo_files(args.images, args.n_images)]
    bodies = [http_body("predict", "files", [i], (photos, None)) for i in range(len(photos))]
    size = sum(len(content) for _, content, _ in bodies) / len(bodies)
    report = new_report("bench.fairness", argv, greedy_connections=args.greedy)
    report["rows"] = []
    for limit in args.limits:
        log = CACHE / "logs" / f"fairness-limit-{limit}.log"
        settings = {"max_files_per_request": min(limit, 32)} if limit else {}
        settings |= {"runtime": "litert", "max_images_per_client": limit}
        with uvicorn_server(args.model_dir, log, **settings) as server:
            windows = asyncio.run(
                measure(server.url, bodies, args.greedy, args.warmup, args.duration)
            )
        for window in windows.values():
            refused = round(window.statuses.get("503", 0) / window.duration, 1)
            report["rows"].append(
                {"limit": limit or "none", **window.row(size), "refused_per_s": refused}
            )
            print(report["rows"][-1], flush=True)
    env = report["environment"]
    about = (
        f"{report['started']}, {env['cpus']} cores (server and load generator share them), "
        "LiteRT, closed loop, a 503 waited out for its Retry-After; one run; load average at "
        f"start {env['loadavg_start']}."
    )
    body = table(report["rows"], COLUMNS, text=("limit", "protocol"))
    title = "Fairness: a client with many connections beside a client with one"
    write_report(report, markdown(title, report, about, body), args.out)


if __name__ == "__main__":
    main()
