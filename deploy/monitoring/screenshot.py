"""Screenshot a real Prometheus graphing the service under load, with the dashboard's queries.

Grafana is not packaged where the project is developed, so docs/deployment.md shows
the dashboard's main queries in Prometheus's own graph page instead. This starts
the service (``python -m app``, the shipped model), Debian's ``prometheus``
(``/usr/bin/prometheus``) scraping it every 2 s with the alert rules loaded, drives
load (real photos from ``data/raw/train``, some noise images the model calls
"neither", some undecodable uploads, then more clients than the service admits, for
503s), and takes the screenshot with headless Chromium (``/usr/bin/chromium``)::

    flock /tmp/catdog-heavy.lock .venv/bin/python -m deploy.monitoring.screenshot \\
        --out docs/images/prometheus-under-load.png

The queries are read from ``deploy/monitoring/grafana/catdog.json`` (panel title and
refId), so the picture shows what the dashboard shows.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.harness import free_port, start_uvicorn, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana" / "catdog.json"
RULES = ROOT / "deploy" / "monitoring" / "catdog-rules.yml"
PHOTOS = ROOT / "data" / "raw" / "train"
PROMETHEUS, CHROMIUM = "/usr/bin/prometheus", "/usr/bin/chromium"
# Queries of the dashboard shown (panel title, refId), one Prometheus graph each.
SHOWN = (
    ("Requests/s by status", "A"),
    ("Latency p50 / p99 (predictions)", "A"),
    ("Latency p50 / p99 (predictions)", "B"),
    ("Images in flight", "A"),
    ("'Neither' share", "A"),
)
# Tall enough for every graph: a page taller than the window scrolls to the last one.
WINDOW = "1400,3900"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
)


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of each shown query, its rate window set for a 2 s scrape."""
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    shown = []
    for title, ref in SHOWN:
        [target] = [t for t in panels[title]["targets"] if t["refId"] == ref]
        shown.append((title, target["expr"].replace("$__rate_interval", "10s")))
    return shown


def graph_url(port: int, minutes: int) -> str:
    """Prometheus's graph page with one graph per shown query."""
    params: dict[str, str] = {}
    for i, (_, expr) in enumerate(queries()):
        params.update(
            {
                f"g{i}.expr": expr,
                f"g{i}.tab": "0",
                f"g{i}.range_input": f"{minutes}m",
                f"g{i}.stacked": "0",
                f"g{i}.show_exemplars": "0",
            }
        )
    return f"http://127.0.0.1:{port}/graph?{urllib.parse.urlencode(params)}"


def start_prometheus(folder: Path, target_port: int, port: int) -> subprocess.Popen[bytes]:
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "5s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "catdog", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))
    log = open(folder / "prometheus.log", "wb")  # noqa: SIM115  # lives as long as the process
    return subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def noise_jpeg(seed: int) -> bytes:
    """Random pixels: neither a cat nor a dog."""
    pixels = np.random.default_rng(seed).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


async def client_loop(url: str, bodies: list[bytes], until: float, rng: random.Random) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < until:
            body = rng.choice(bodies)
            try:
                await client.post(url, files={"file": ("x.jpg", body, "image/jpeg")})
            except httpx.HTTPError:
                await asyncio.sleep(0.1)


async def load(url: str, phases: list[tuple[int, float, float]]) -> None:
    """Each phase: (clients, seconds, share of noise images)."""
    photos = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))[:200]]
    noise = [noise_jpeg(i) for i in range(20)]
    broken = [b"not an image at all" * 10]
    rng = random.Random(0)
    for clients, seconds, noise_share in phases:
        count = int(len(photos) * noise_share / (1 - noise_share)) if noise_share else 0
        bodies = photos + [rng.choice(noise) for _ in range(count)] + broken
        until = time.monotonic() + seconds
        tasks = [client_loop(url, bodies, until, random.Random(i)) for i in range(clients)]
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/prometheus-under-load.png")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "catdog")
    args = parser.parse_args()
    phases = [(8, 60, 0.02), (16, 60, 0.15), (96, 30, 0.15), (8, 20, 0.02)]
    minutes = int(sum(p[1] for p in phases) / 60) + 2
    with tempfile.TemporaryDirectory(prefix="catdog-prometheus-") as tmp:
        folder = Path(tmp)
        server = start_uvicorn(args.model_dir, folder / "server.log", poll_interval_s=0)
        prometheus = None
        try:
            wait_ready(server)
            prometheus_port = free_port()
            prometheus = start_prometheus(folder, server.port, prometheus_port)
            time.sleep(10)  # a few scrapes of the idle service first
            asyncio.run(load(f"http://127.0.0.1:{server.port}/predict", phases))
            time.sleep(6)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [CHROMIUM, *CHROMIUM_FLAGS, f"--window-size={WINDOW}"]
                + [f"--screenshot={args.out.resolve()}", graph_url(prometheus_port, minutes)],
                check=True,
                capture_output=True,
                timeout=180,
            )
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(30)
            stop(server)
    print(f"wrote {args.out}")
    for title, expr in queries():
        print(f"{title}: {expr}")


if __name__ == "__main__":
    main()
