"""The same photos through three protocols: OIP binary, OIP JSON/base64 and multipart /predict.

One real service (``bench.harness``) serves ``--model-dir`` with its default
settings. For each client count, each protocol gets a warm-up and then a measured
window of closed-loop load: C clients, each sending one photo after another (drawn
in turn from ``--n-images`` photos of ``--images``) and waiting for the answer.
Every request body is built once beforehand, so the load generator spends the
same on each protocol:

* ``oip-binary``: ``POST /v2/models/catdog/infer``, BYTES input as binary tensor
  data (``Inference-Header-Content-Length``), answer as binary tensor data;
* ``oip-json``: the same with the file in base64 in the JSON, answer in JSON;
* ``predict``: ``POST /predict``, multipart ``file``.

Reported per protocol and client count: answers per second in the window, latency
p50 and p99 of the answered requests, other statuses, request body size. The load
generator runs on the same 2 cores as the server: compare the rows with each other,
not with another machine.

    python -m bench.protocols --clients 16,64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.harness import (
    CACHE,
    ROOT,
    Metrics,
    markdown,
    new_report,
    parse_metrics,
    samples,
    table,
    uvicorn_server,
    write_report,
)

PROTOCOLS = ("oip-binary", "oip-json", "predict")
Body = tuple[str, bytes, dict[str, str]]  # path, content, headers


@dataclass
class Window:
    """What C clients saw in one measured window."""

    protocol: str
    clients: int
    duration: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def row(self, body_bytes: float) -> dict[str, object]:
        """A report row."""
        ok = np.array(self.latencies) * 1000
        return {
            "protocol": self.protocol,
            "clients": self.clients,
            "rps": round(len(ok) / self.duration, 1),
            "p50": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
            "p99": round(float(np.percentile(ok, 99)), 1) if len(ok) else None,
            "ok": len(ok),
            "other": ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())) or "none",
            "body_kb": round(body_bytes / 1024, 1),
        }


def request_bodies(protocol: str, photos: list[bytes], model: str) -> list[Body]:
    """One prepared request per photo."""
    bodies: list[Body] = []
    for position, photo in enumerate(photos):
        if protocol == "predict":
            files = {"file": (f"photo{position}.jpg", photo, "image/jpeg")}
            request = httpx.Request("POST", "/predict", files=files)
            bodies.append(("/predict", request.read(), dict(request.headers)))
            continue
        tensor: dict[str, object] = {"name": "image_bytes", "shape": [1], "datatype": "BYTES"}
        infer: dict[str, object] = {"inputs": [tensor]}
        path = f"/v2/models/{model}/infer"
        if protocol == "oip-json":
            tensor["data"] = [base64.b64encode(photo).decode()]
            content = json.dumps(infer).encode()
            bodies.append((path, content, {"content-type": "application/json"}))
            continue
        raw = struct.pack("<I", len(photo)) + photo
        tensor["parameters"] = {"binary_data_size": len(raw)}
        infer["parameters"] = {"binary_data_output": True}
        header = json.dumps(infer).encode()
        headers = {"Inference-Header-Content-Length": str(len(header))}
        bodies.append((path, header + raw, headers))
    return bodies


async def closed_loop(
    url: str, bodies: list[Body], start: int, seconds: float, window: Window
) -> None:
    """One client on its own connection: send, wait, repeat for ``seconds``; record the
    answers that end within them (one pool per client: httpx's shared pool slows down
    with many connections, which would cap the load instead of the server)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def attempt(turn: int) -> str | None:
            path, content, headers = bodies[turn % len(bodies)]
            try:
                response = await client.post(path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return None if response.status_code == 200 else str(response.status_code)

        await send_until(attempt, start, time.perf_counter() + seconds, window)


async def send_until(
    attempt: Callable[[int], Awaitable[str | None]], start: int, until: float, window: Window
) -> None:
    """One client: ``attempt`` request ``turn``, ``turn + 1``, ... until ``until``; record
    the answers that end before it (``attempt`` gives None for an answer, else the
    status it failed with)."""
    turn = start
    while time.perf_counter() < until:
        sent = time.perf_counter()
        status = await attempt(turn)
        turn += 1
        done = time.perf_counter()
        if done > until:
            break
        if status is None:
            window.latencies.append(done - sent)
        else:
            window.statuses[status] += 1


async def run_window(
    url: str, protocol: str, bodies: list[Body], clients: int, warmup: float, duration: float
) -> Window:
    """A warm-up, then one measured window of ``clients`` closed-loop clients."""
    warm = Window(protocol, clients, warmup)
    await asyncio.gather(*(closed_loop(url, bodies, i, warmup, warm) for i in range(clients)))
    window = Window(protocol, clients, duration)
    await asyncio.gather(*(closed_loop(url, bodies, i, duration, window) for i in range(clients)))
    return window


def mean_size(bodies: list[Body]) -> float:
    """The mean size of the prepared request bodies, in bytes."""
    return float(np.mean([len(content) for _, content, _ in bodies]))


def load_photos(folder: Path, count: int) -> list[bytes]:
    """``count`` photos, half of each class, in a fixed order."""
    cats = sorted(folder.glob("cat.*.jpg"))[: count // 2]
    dogs = sorted(folder.glob("dog.*.jpg"))[: count - len(cats)]
    photos = [p.read_bytes() for pair in zip(cats, dogs) for p in pair]
    if not photos:
        raise SystemExit(f"no cat.*.jpg / dog.*.jpg photos in {folder}")
    return photos


def load_parser(
    module: str,
    doc: str | None,
    out: str,
    *,
    n_images: int = 32,
    warmup: float = 2.0,
    duration: float = 10.0,
) -> argparse.ArgumentParser:
    """The arguments of a closed-loop load benchmark of photos: the model, the photos,
    the warm-up and window, where the report goes (``bench/results/<out>``)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "catdog")
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "raw" / "train")
    parser.add_argument("--n-images", type=int, default=n_images)
    parser.add_argument("--warmup", type=float, default=warmup, help="seconds before each window")
    parser.add_argument("--duration", type=float, default=duration, help="seconds of each window")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = load_parser("bench.protocols", __doc__, "protocols.md")
    parser.add_argument("--clients", default="16,64", help="client counts, comma-separated")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve, load each protocol at each client count, write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    photos = load_photos(args.images, args.n_images)
    report = new_report("bench.protocols", argv, photos=len(photos))
    rows: list[dict[str, object]] = []
    with uvicorn_server(args.model_dir, CACHE / "protocols" / "server.log") as server:
        metrics = parse_metrics(httpx.get(f"{server.url}/metrics").text)
        runtime = [s.labels["runtime"] for s in metrics if s.name == "catdog_model_version"]
        report["environment"]["runtime"] = runtime[0] if runtime else None
        info = httpx.get(f"{server.url}/v1/models/catdog").json()
        report["loaded_versions"] = info.get("loaded_versions")
        model = "catdog"
        for clients in (int(c) for c in args.clients.split(",")):
            for protocol in PROTOCOLS:
                bodies = request_bodies(protocol, photos, model)
                window = asyncio.run(
                    run_window(server.url, protocol, bodies, clients, args.warmup, args.duration)
                )
                rows.append(window.row(mean_size(bodies)))
                print(rows[-1], flush=True)
        metrics = parse_metrics(httpx.get(f"{server.url}/metrics").text)
        report["batch_size_mean"] = _mean_batch(metrics)
        report["peak_rss_mb"] = server.peak_rss_mb
    report["rows"] = rows
    write_report(report, render(report, args), args.out)


def _mean_batch(metrics: Metrics) -> float | None:
    total = sum(samples(metrics, "catdog_batch_size_sum"))
    count = sum(samples(metrics, "catdog_batch_size_count"))
    return round(total / count, 1) if count else None


def _memory(versions: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{v['version']} on {v['runtime']}: {(v['memory_bytes'] or 0) / 2**20:.0f} MB"
        for v in versions
    )


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    environment = report["environment"]
    about = (
        f"{report['started']}, {environment['cpus']} cores (server and load generator share"
        f" them), runtime {environment.get('runtime')}, model {args.model_dir.name},"
        f" {environment['photos']} photos from {args.images.name}"
        f" sent in turn, closed loop, {args.warmup:g} s warm-up then {args.duration:g} s"
        f" measured per row, one run; load average at start {environment['loadavg_start']}."
        f" Mean batch over the run: {report.get('batch_size_mean')}; server peak RSS"
        f" {report.get('peak_rss_mb')} MB; loaded versions and their memory (RSS growth at"
        f" load): {_memory(report.get('loaded_versions') or [])}."
    )
    columns = [
        ("protocol", "protocol"),
        ("clients", "clients"),
        ("answers/s", "rps"),
        ("p50 ms", "p50"),
        ("p99 ms", "p99"),
        ("answered", "ok"),
        ("other statuses", "other"),
        ("request body kB", "body_kb"),
    ]
    title = "Protocols side by side: OIP binary, OIP JSON/base64, multipart /predict"
    rows = table(report["rows"], columns, text=("protocol", "other"))
    return markdown(title, report, about, rows)


if __name__ == "__main__":
    main()
