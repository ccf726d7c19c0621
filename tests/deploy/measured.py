"""Measured figures the pods are sized from, read where the measurements keep them.

Nothing here is a number typed in: every figure comes from a results file or the
documentation that reports it, so a new measurement changes what the tests expect.

* the service under load, per runtime and batching mode (idle and peak RSS, req/s and
  latency per client count): ``bench/results/runtimes-serve.json``, written by the
  ``bench.serve`` command recorded in it;
* decoding memory per pixel: docs/service.md, from ``python -m bench.decode_memory``;
* memory held per byte of uploads in flight, per route:
  ``bench/results/upload-memory.json``, from ``python -m bench.upload_memory``;
* memory of parsing the largest JSON-number requests in a worker process:
  ``bench/results/json-offload.json``, from ``python -m bench.json_offload``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from tests.deploy.k8s import ROOT

SERVE_RESULTS = ROOT / "bench" / "results" / "runtimes-serve.json"
SERVICE_DOC = ROOT / "docs" / "service.md"
UPLOAD_RESULTS = ROOT / "bench" / "results" / "upload-memory.json"
JSON_RESULTS = ROOT / "bench" / "results" / "json-offload.json"
MB = 1e6  # the results files count memory in MB of 10^6 bytes

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
def serve_results() -> dict[str, Any]:
    """``bench/results/runtimes-serve.json``."""
    return json.loads(SERVE_RESULTS.read_text())


@functools.cache
def serve_runs() -> tuple[ServeRun, ...]:
    """Every runtime x batching mode the serving benchmark ran."""
    results = serve_results()
    modes = results["settings"]["mode_settings"]
    runs = []
    for model in results["models"]:
        rows = model["service"]
        for mode in dict.fromkeys(r["mode"] for r in rows):
            mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["clients"])
            points = tuple(
                Point(r["clients"], r["req_per_s"], r["mean_ms"], r["p99_ms"], r["status_503"])
                for r in mine
            )
            runs.append(
                ServeRun(
                    runtime=model["runtime"],
                    mode=mode,
                    settings=modes.get(mode, {}),
                    cpus=results["environment"]["cpus"],
                    idle_rss_bytes=max(r["idle_rss_mb"] for r in mine) * MB,
                    peak_rss_bytes=max(r["peak_rss_mb"] for r in mine) * MB,
                    points=points,
                )
            )
    return tuple(runs)


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
    assert runs, f"no serving measurement of runtime {runtime!r} in {SERVE_RESULTS.name}"
    fitting = [r for r in runs if r.max_batch_size(default_batch) <= max_batch_size]
    if not fitting:
        fitting = [min(runs, key=lambda r: r.max_batch_size(default_batch))]
    return max(fitting, key=lambda r: r.peak_rss_bytes)


@functools.cache
def decode_bytes_per_pixel() -> float:
    """Peak decoding memory per pixel, as docs/service.md reports the measurement."""
    found = {
        float(n) for n in re.findall(r"(\d+(?:\.\d+)?) bytes per pixel", SERVICE_DOC.read_text())
    }
    assert len(found) == 1, f"{SERVICE_DOC.name}: expected one 'N bytes per pixel', got {found}"
    return found.pop()


@functools.cache
def upload_results() -> dict[str, Any]:
    """``bench/results/upload-memory.json``."""
    return json.loads(UPLOAD_RESULTS.read_text())


def upload_bytes_held_per_byte() -> float:
    """Memory per byte of files in flight, on the route that holds the most."""
    return max(r["rise_per_byte"] for r in upload_results()["rows"])


def json_parsing_bytes(processes: int, images: int) -> float:
    """Parsing a JSON-number request of ``images`` images with ``processes`` worker
    processes (0: on the event loop): each process's peak plus how far the server rose
    meanwhile (the body, and the copy it sends to a process), scaled from the measured
    requests by their images (the memory is per number). The worst of the measured
    servers parsing that way: a body the fast path does not take goes to pydantic."""
    results = json.loads(JSON_RESULTS.read_text())
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
