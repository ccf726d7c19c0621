"""Server-side view of batching, with client and server pinned to separate cores.

On a 2-core machine a load generator on the same cores as the service competes
with TensorFlow for CPU and distorts batching-on vs -off comparisons. This probe
pins the server to one core and itself to another (``taskset``), drives
``/predict`` with closed-loop httpx clients, and reads the server's own metrics:
mean request time, queue wait, inference time per call, mean batch size.

    taskset -c 0 .venv/bin/python -m bench.pinned --model-dir runs/models/article3 \\
        --mode on --clients 64 --server-cpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.serve import free_port


def metric(text: str, name: str) -> float:
    """One sample's value from Prometheus text (NaN if absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


async def drive(url: str, photos: list[bytes], clients: int, seconds: float) -> str:
    """Closed-loop load; returns a one-line report with the server's metrics."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
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
        text = (await client.get("/metrics")).text

    def mean(name: str, labels: str = "") -> float:
        return metric(text, f"{name}_sum{labels}") / metric(text, f"{name}_count{labels}")

    request = mean("catdog_request_duration_seconds", '{route="/predict"}')
    return (
        f"{ok / elapsed:.1f} req/s, {rejected} x 503; server-side request "
        f"{request * 1000:.1f} ms, "
        f"queue wait {mean('catdog_queue_wait_seconds') * 1000:.1f} ms, "
        f"inference {mean('catdog_inference_seconds') * 1000:.1f} ms/call, "
        f"mean batch {mean('catdog_batch_size'):.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    """Start the pinned server, drive it, print one line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--mode", choices=("on", "off"), default="on")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--server-cpus", default="1", help="taskset CPU list for the server")
    p.add_argument("--images", type=Path, default=Path("data/split/test/cat"))
    args = p.parse_args(argv)
    photos = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[:100]]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}
    env.update(CATDOG_MODEL_DIR=str(args.model_dir), TF_CPP_MIN_LOG_LEVEL="2")
    if args.mode == "off":
        env["CATDOG_MAX_BATCH_SIZE"] = "1"
    command = ["taskset", "-c", args.server_cpus, sys.executable, "-m", "uvicorn",
               "app.main:app", "--port", str(port), "--no-access-log"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        report = asyncio.run(drive(f"http://127.0.0.1:{port}", photos, args.clients, args.seconds))
        print(f"{args.model_dir} batching {args.mode}, {args.clients} clients: {report}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
