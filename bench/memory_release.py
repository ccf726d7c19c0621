"""Resident memory before, during and after a burst of large JSON bodies.

``python -m bench memory_release`` starts the service (``servicekit``), sends ``--bodies``
TF Serving ``:predict`` bodies at once, each ``--images`` images of pixels as JSON
numbers, and prints the RSS of the main process and of its children (the JSON parsing
processes) before, at their peak while the burst is answered, and 1, 5 and 10 s after
it: whether the memory a burst took comes back (``app.core.heap.release_when_idle``).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from bench import harness
from servicekit import proc_status_kb, uvicorn_server


def tree_mb(pid: int) -> tuple[int, int]:
    """RSS of ``pid`` and the sum over its children, MB (0 for a process gone)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = children.read_text().split() if children.exists() else []
    rss = [(proc_status_kb(int(p), "VmRSS") or 0) // 1024 for p in (pid, *kids)]
    return rss[0], sum(rss[1:])


async def burst(url: str, body: bytes, count: int, pid: int) -> tuple[dict[int, int], list[int]]:
    """``count`` bodies at once; their statuses and the peak (main, children) RSS."""
    peak = [0, 0]

    async def watch() -> None:
        while True:
            main, children = tree_mb(pid)
            peak[0], peak[1] = max(peak[0], main), max(peak[1], children)
            await asyncio.sleep(0.1)

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(
            *(client.post("/v1/models/catdog:predict", content=body) for _ in range(count))
        )
        watcher.cancel()
    statuses = [a.status_code for a in answers]
    return {s: statuses.count(s) for s in set(statuses)}, peak


def main(argv: Sequence[str] | None = None) -> None:
    """Serve, send the burst, print the memory before, at its peak and after."""
    p = harness.parser("memory_release", __doc__)
    p.add_argument("--bodies", type=int, default=12)
    p.add_argument("--images", type=int, default=8, help="224x224 images of pixels per body")
    args = p.parse_args(argv)
    pixels = np.random.default_rng(0).random((args.images, 224, 224, 3), dtype=np.float32)
    body = json.dumps({"instances": pixels.round(4).tolist()}).encode()
    log = Path(tempfile.mkdtemp()) / "server.log"
    with uvicorn_server(args.model_dir, log) as server:
        pid = server.process.pid
        print(f"{args.bodies} bodies of {len(body) / 1e6:.1f} MB at once")
        print(f"before: main, parsing processes {tree_mb(pid)} MB")
        statuses, peak = asyncio.run(burst(server.url, body, args.bodies, pid))
        print(f"answers {statuses}; peak: main, parsing processes {tuple(peak)} MB")
        started = time.monotonic()
        for after in (1, 5, 10):
            time.sleep(max(0.0, started + after - time.monotonic()))
            print(f"{after:>2} s after: main, parsing processes {tree_mb(pid)} MB")


if __name__ == "__main__":
    main()
