"""What a large JSON-number tensor costs the other requests, parsed on the event loop
or in the parsing process (``CATDOG_JSON_PARSE_PROCESSES``, ``app/core/offload.py``),
read straight into arrays (``CATDOG_JSON_FAST_TENSORS``, ``app/protocols/numbers.py``)
or as a Python object per number (pydantic).

Five servers, one at a time, each a fresh ``python -m app`` serving the shipped model
(LiteRT): parsing on the event loop (no process) with pydantic and with the fast path,
in the process with pydantic, the defaults (the fast path, in a process for bodies of
``CATDOG_JSON_OFFLOAD_VALUES`` values or more: two images and up), and a process for
every body (to show what the threshold saves one image). Then:

* ``one image``: TF Serving ``:predict`` with one image of pixels as JSON numbers
  (150,528 values), one request at a time: its latency;
* ``N images``: one client sends ``:predict`` with N images of JSON numbers while
  another asks ``GET /healthz`` every 10 ms: the big request's latency, and how long
  ``/healthz`` waited at worst and at the 99th percentile while the big one ran.

Each big request is sent ``--rounds`` times and its stalls are pooled. Pixels are
float32 values as ``tolist()`` writes them (~20 characters each: 32 images are a
~100 MB body). Memory: the server's resident set right after ``/readyz`` and its
high-water mark after the rounds, and the parsing process's high-water mark; the
pods' memory limits count the last two, at their worst: a body the fast path does not
take is parsed by pydantic (``tests/deploy``).

    .venv/bin/python -m bench.json_offload --out bench/results/json-offload.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench import sizing
from bench.harness import (
    ROOT,
    memory_mb,
    new_report,
    table,
    uvicorn_server,
    write_report,
)

MODEL_DIR = ROOT / "models" / "catdog"
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


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the parsing process, multiprocessing's
    resource tracker)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.append(int(status.parent.name))
    return found


def main(argv: list[str] | None = None) -> None:
    """Run each server of ``SERVERS`` in turn and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,32", help="images in the big requests")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    report = new_report("bench.json_offload", sys.argv[1:] if argv is None else argv)
    rows = []
    memory: dict[str, dict[str, float | None]] = {}
    for name, settings in SERVERS.items():
        log = ROOT / "runs" / "bench" / f"json-offload-{name.split()[0]}.log"
        with uvicorn_server(MODEL_DIR, log, runtime="litert", **settings) as server:
            pid = server.process.pid
            idle = memory_mb(pid)["VmRSS"]
            measured = asyncio.run(measure(server.url, sizes, args.rounds))
            workers = [memory_mb(child)["VmHWM"] for child in children(pid)]
            memory[name] = {
                "server_idle_mb": round(idle, 1),
                "server_peak_mb": round(memory_mb(pid)["VmHWM"], 1),
                "parser_peak_mb": round(max(workers), 1) if workers else None,
            }
            for row in measured:
                rows.append({"server": name, **row})
        print(f"{name}: done", flush=True)
    report["sizes"] = sizes
    report["rows"] = rows
    report["memory"] = memory
    memory_rows = [{"server": k, **v} for k, v in memory.items()]
    memory_columns = [
        ("JSON parsed on", "server"),
        ("server after /readyz (MB)", "server_idle_mb"),
        ("server peak (MB)", "server_peak_mb"),
        ("parsing process peak (MB)", "parser_peak_mb"),
    ]
    columns = [
        ("JSON parsed on", "server"),
        ("request", "case"),
        ("its latency (ms, median)", "latency_ms"),
        ("/healthz worst (ms)", "healthz_max_ms"),
        ("/healthz p99 (ms)", "healthz_p99_ms"),
        ("/healthz answers", "healthz_answers"),
    ]
    markdown = "\n".join(
        [
            "# JSON-number tensors: on the event loop or in a process, fast or by pydantic",
            "",
            f"`{report['command']}` ({report['started']}, load {report['environment']})",
            "",
            *table(rows, columns, text=["server", "case"]),
            "",
            "Memory (resident set, `VmRSS` / `VmHWM`):",
            "",
            *table(memory_rows, memory_columns, text=["server"]),
        ]
    )
    write_report(report, markdown, args.out)
    sizing.update("json_parsing", sizing.json_part(report))


if __name__ == "__main__":
    main()
