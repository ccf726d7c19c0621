"""What a large JSON-number tensor costs the other requests and memory. It is parsed on the
event loop or in the parsing process (``CATDOG_JSON_PARSE_PROCESSES``), by the fast path
(``CATDOG_JSON_FAST_TENSORS``) or by pydantic.

One fresh LiteRT server per way of parsing (``SERVERS``). On each: one image of pixels
as JSON numbers to TF Serving ``:predict``, one request at a time; then N images while
another client asks ``GET /healthz`` every 10 ms (the big request's latency, how long
``/healthz`` waited), ``--rounds`` times. Memory: the server's RSS after ``/readyz``, its
peak, and the parsing process's peak, which the pods' memory limits count.

    .venv/bin/python -m bench json_offload --out bench/results/json-offload.md
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench import harness, sizing
from bench.harness import CACHE, ROOT, descendants, ints, memory_mb, table, uvicorn_server

PREDICT = "/v1/models/catdog:predict"
# Each server: its name in the report, and its settings beside the defaults.
SERVERS = {
    "event loop, pydantic": {"json_parse_processes": 0, "json_fast_tensors": False},
    "event loop": {"json_parse_processes": 0},
    "process, pydantic": {"json_fast_tensors": False},
    "process (defaults)": {},
    "process, every body": {"json_offload_values": 1},
}
RESULTS = Path(__file__).with_name("results") / "json-offload.md"


def number_body(images: int, size: int = 224) -> bytes:
    """A ``:predict`` body of ``images`` random pixel images as JSON numbers."""
    pixels = np.random.default_rng(images).random((images, size, size, 3), dtype=np.float32)
    return json.dumps({"instances": pixels.tolist()}).encode()


async def one_image(client: httpx.AsyncClient, body: bytes, count: int) -> list[float]:
    """Latencies (ms) of ``count`` one-image requests, one at a time."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post(PREDICT, content=body)
        response.raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def stalled(client: httpx.AsyncClient, body: bytes) -> tuple[float, list[float]]:
    """The big request's latency (ms) and every ``/healthz`` latency (ms) while it ran."""
    done = asyncio.Event()
    waits: list[float] = []

    async def poll() -> None:
        while not done.is_set():
            started = time.perf_counter()
            response = await client.get("/healthz")
            response.raise_for_status()
            waits.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)

    poller = asyncio.create_task(poll())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    response = await client.post(PREDICT, content=body)
    response.raise_for_status()
    latency = (time.perf_counter() - started) * 1000
    done.set()
    await poller
    return latency, waits


async def measure(url: str, sizes: list[int], rounds: int) -> list[dict[str, object]]:
    """The rows of one server: the one-image latency, then each big request's stall."""
    rows: list[dict[str, object]] = []
    limits = httpx.Limits(max_connections=4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        one = number_body(1)
        await one_image(client, one, 2)  # warm-up
        single = await one_image(client, one, 20)
        rows.append({"case": "one image", "latency_ms": round(float(np.median(single)), 1)})
        for images in sizes:
            body = number_body(images)
            latencies, waits = [], []
            for _ in range(rounds):
                latency, polled = await stalled(client, body)
                latencies.append(latency)
                waits += polled
            rows.append(
                {
                    "case": f"{images} images ({len(body) / 1e6:.0f} MB)",
                    "latency_ms": round(float(np.median(latencies)), 1),
                    "healthz_max_ms": round(max(waits), 1),
                    "healthz_p99_ms": round(float(np.percentile(waits, 99)), 1),
                    "healthz_answers": len(waits),
                }
            )
    return rows


COLUMNS = [("JSON parsed on", "server"), ("request", "case")]
COLUMNS += [("its latency (ms, median)", "latency_ms"), ("/healthz worst (ms)", "healthz_max_ms")]
COLUMNS += [("/healthz p99 (ms)", "healthz_p99_ms"), ("/healthz answers", "healthz_answers")]
MEMORY = [("JSON parsed on", "server"), ("server after /readyz (MB)", "server_idle_mb")]
MEMORY += [("server peak (MB)", "server_peak_mb"), ("parsing process peak (MB)", "parser_peak_mb")]


def main(argv: list[str] | None = None) -> None:
    """Run each server of ``SERVERS`` in turn and write the report."""
    parser = harness.parser("json_offload", __doc__, "json-offload.md")
    parser.add_argument("--sizes", type=ints, default=[8, 32], help="images in the big requests")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = args.sizes
    report = harness.new_report("bench.json_offload", sys.argv[1:] if argv is None else argv)
    rows = []
    memory: dict[str, dict[str, float | None]] = {}
    for name, settings in SERVERS.items():
        log = CACHE / "logs" / f"json-offload-{name.split()[0].rstrip(',')}.log"
        with uvicorn_server(args.model_dir, log, runtime="litert", **settings) as server:
            pid = server.process.pid
            idle = memory_mb(pid)["VmRSS"]
            measured = asyncio.run(measure(server.url, sizes, args.rounds))
            workers = [memory_mb(child)["VmHWM"] for child in descendants(pid)]
            memory[name] = {
                "server_idle_mb": round(idle, 1),
                "server_peak_mb": round(memory_mb(pid)["VmHWM"], 1),
                "parser_peak_mb": round(max(workers), 1) if workers else None,
            }
            rows += [{"server": name, **row} for row in measured]
        print(f"{name}: done", flush=True)
    report.update(sizes=sizes, rows=rows, memory=memory)
    memory_rows = [{"server": k, **v} for k, v in memory.items()]
    cpus, model = report["environment"]["cpus"], os.path.relpath(args.model_dir.resolve(), ROOT)
    about = f"{report['started']}; {cpus} CPUs; LiteRT, {model}."
    body = [*table(rows, COLUMNS, ["server", "case"]), "", "Memory (`VmRSS` / `VmHWM`):", ""]
    body += table(memory_rows, MEMORY, ["server"])
    title = "JSON-number tensors: on the event loop or in a process, fast or by pydantic"
    harness.write_report(report, harness.markdown(title, report, about, body), args.out)
    if args.out.resolve() == RESULTS.resolve():  # the run the pods are sized from
        sizing.update("json_parsing", sizing.json_part(report))


if __name__ == "__main__":
    main()
