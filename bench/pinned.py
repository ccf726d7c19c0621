"""Server-side view of batching, with client and server pinned to separate cores.

On a 2-core machine a load generator on the same cores as the service competes
with TensorFlow for CPU and distorts batching-on vs -off comparisons. This probe
starts the server pinned to ``--server-cpus`` (``bench.harness``), runs itself
on another core (``taskset``), drives ``/predict`` with closed-loop httpx
clients, and reads the server's own metrics: mean request time, queue wait,
inference time per call, mean batch size.

    taskset -c 0 .venv/bin/python -m bench.pinned --model-dir runs/models/article3 \\
        --mode on --clients 64 --server-cpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx

from bench.harness import CACHE, mean, read_metrics, uvicorn_server
from bench.serve_load import MODES


def cpu_list(text: str) -> set[int]:
    """A ``taskset``-style CPU list: ``"1"``, ``"1,3"`` or ``"1-3"``."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


async def drive(url: str, photos: list[bytes], clients: int, seconds: float) -> str:
    """Closed-loop load; returns a one-line report with the server's metrics."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        ok, rejected, stop = 0, 0, time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal ok, rejected
            while time.perf_counter() < stop:
                photo = photos[index % len(photos)]
                index += 1
                response = await client.post("/predict", files={"file": ("p.jpg", photo)})
                if response.status_code == 200:
                    ok += 1
                elif response.status_code == 503:
                    rejected += 1
                    await asyncio.sleep(0.05)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        metrics = await read_metrics(client)

    request = mean(metrics, "catdog_request_duration_seconds", route="/predict")
    return (
        f"{ok / elapsed:.1f} req/s, {rejected} x 503; server-side request "
        f"{request * 1000:.1f} ms, "
        f"queue wait {mean(metrics, 'catdog_queue_wait_seconds') * 1000:.1f} ms, "
        f"inference {mean(metrics, 'catdog_inference_seconds') * 1000:.1f} ms/call, "
        f"mean batch {mean(metrics, 'catdog_batch_size'):.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    """Start the pinned server, drive it, print one line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--mode", choices=sorted(MODES), default="on")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--server-cpus", type=cpu_list, default={1}, help="CPU list for the server")
    p.add_argument("--images", type=Path, default=Path("data/split/test/cat"))
    args = p.parse_args(argv)
    photos = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[:100]]
    log = CACHE / "logs" / f"pinned-{args.mode}.log"
    with uvicorn_server(args.model_dir, log, cpus=args.server_cpus, **MODES[args.mode]) as server:
        report = asyncio.run(drive(server.url, photos, args.clients, args.seconds))
    print(f"{args.model_dir} batching {args.mode}, {args.clients} clients: {report}")


if __name__ == "__main__":
    main()
