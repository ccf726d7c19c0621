"""Measured figures the pods are sized from, read from the sizing table ``deploy/sizing.json``.

Nothing here is a number typed in: the benchmarks that measure the figures write the
table (``bench/sizing.py`` says which writes which part), so a new measurement
changes what the tests expect, and no test reads a benchmark's report:

* the service under load, per runtime and batching mode (idle and peak RSS, req/s and
  latency per client count): the ``serve`` part, from ``python -m bench serve``;
* decoding memory per pixel: ``decode``, from ``python -m bench decode_memory``;
* memory held per byte of uploads in flight, per route: ``uploads``, from
  ``python -m bench upload_memory``;
* memory of parsing the largest JSON-number requests in a worker process:
  ``json_parsing``, from ``python -m bench json_offload``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from tests.deploy.k8s import ROOT

SIZING = ROOT / "deploy" / "sizing.json"
MB = 1e6  # the table counts memory in MB of 10^6 bytes

# The knee of the throughput curve: the first client count that reaches this share of
# the best req/s measured; past it, more images in flight add waiting, not answers.
KNEE_SHARE = 0.95
# The settings a batching mode of bench.serve may change (its --mode NAME:SETTING=VALUE).
BATCHING = ("max_batch_size", "batch_timeout_ms", "max_batch_wait_ms")


@dataclass(frozen=True)
class Point:
    """One client count of a ``bench.serve`` run."""

    clients: int
    req_per_s: float
    mean_ms: float
    p99_ms: float
    status_503: int

    @property
    def in_flight(self) -> float:
        """Little's law: requests in the server on average = throughput x time in it."""
        return self.req_per_s * self.mean_ms / 1000


@dataclass(frozen=True)
class ServeRun:
    """One runtime in one batching mode, as ``bench.serve`` measured it."""

    runtime: str
    mode: str
    settings: dict[str, Any]  # what the mode changed from the service defaults
    cpus: int
    idle_rss_bytes: float
    peak_rss_bytes: float
    points: tuple[Point, ...]

    def max_batch_size(self, default: int) -> int:
        """The batch size the mode ran with."""
        return int(self.settings.get("max_batch_size", default))

    def knee(self) -> Point:
        """The first point within ``KNEE_SHARE`` of the best req/s (no 503 answers)."""
        clean = [p for p in self.points if p.status_503 == 0]
        best = max(p.req_per_s for p in clean)
        return min((p for p in clean if p.req_per_s >= KNEE_SHARE * best), key=lambda p: p.clients)


@functools.cache
def sizing() -> dict[str, Any]:
    """``deploy/sizing.json``."""
    return json.loads(SIZING.read_text())


@functools.cache
def serve_runs() -> tuple[ServeRun, ...]:
    """Every runtime x batching mode the serving benchmark ran."""
    part = sizing()["serve"]
    return tuple(
        ServeRun(
            runtime=run["runtime"],
            mode=run["mode"],
            settings=run["settings"],
            cpus=part["cpus"],
            idle_rss_bytes=run["idle_rss_mb"] * MB,
            peak_rss_bytes=run["peak_rss_mb"] * MB,
            points=tuple(Point(**point) for point in run["points"]),
        )
        for run in part["runs"]
    )


def run_like(settings: Any) -> ServeRun | None:
    """The run with the pod's runtime and batching settings, if one was measured (a mode
    that changed anything else is not the pod's)."""
    for run in serve_runs():
        if run.runtime != settings.runtime or not set(run.settings) <= set(BATCHING):
            continue
        measured = type(settings)(**run.settings)  # the mode over the service defaults
        if all(getattr(measured, f) == getattr(settings, f) for f in BATCHING):
            return run
    return None


def largest_run(runtime: str, max_batch_size: int, default_batch: int) -> ServeRun:
    """The run of ``runtime`` with the highest peak RSS among those batching no more than
    ``max_batch_size`` (the smallest batching one if every run batched more)."""
    runs = [r for r in serve_runs() if r.runtime == runtime]
    assert runs, f"no serving measurement of runtime {runtime!r} in {SIZING.name}"
    fitting = [r for r in runs if r.max_batch_size(default_batch) <= max_batch_size]
    if not fitting:
        fitting = [min(runs, key=lambda r: r.max_batch_size(default_batch))]
    return max(fitting, key=lambda r: r.peak_rss_bytes)


def decode_bytes_per_pixel() -> float:
    """Peak decoding memory per pixel."""
    return float(sizing()["decode"]["bytes_per_pixel"])


def upload_bytes_held_per_byte() -> float:
    """Memory per byte of files in flight, on the route that holds the most."""
    return max(r["rise_per_byte"] for r in sizing()["uploads"]["rows"])


def json_parsing_bytes(processes: int, images: int) -> float:
    """Parsing a JSON-number request of ``images`` images with ``processes`` worker
    processes (0: on the event loop): each process's peak plus how far the server rose
    meanwhile (the body, and the copy it sends to a process), scaled from the measured
    requests by their images (the memory is per number). The worst of the measured
    servers parsing that way: a body the fast path does not take goes to pydantic."""
    results = sizing()["json_parsing"]
    where = "process" if processes else "event loop"
    runs = [run for name, run in results["memory"].items() if name.startswith(where)]
    measured_images = max(results["sizes"])
    return max(
        (processes * (run["parser_peak_mb"] or 0) + run["server_peak_mb"] - run["server_idle_mb"])
        * MB
        * images
        / measured_images
        for run in runs
    )


def body_bytes_held_per_byte() -> float:
    """Memory of the service process per byte of request bodies held at once (what
    ``CATDOG_BODY_BYTES_BUDGET`` counts), on the kind that holds the most; the JSON
    parsing process is its own part (``json_parsing_bytes``)."""
    return max(r["rise_per_body_byte"] for r in sizing()["uploads"]["rows"])
