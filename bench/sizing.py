"""The pod sizing table, ``deploy/sizing.json``: the measured figures the pods are sized from.

The benchmarks that measure them write their part when they finish: ``bench serve``
(memory and throughput per runtime and batching mode), ``bench upload_memory``
(memory per byte of uploads in flight), ``bench json_offload`` (memory of parsing
JSON-number requests) and ``bench decode_memory`` (decoding memory per pixel).
``tests/deploy`` reads only this table, so a test never depends on a benchmark's
report; each part keeps the command that measured it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from servicekit import ROOT

TABLE = ROOT / "deploy" / "sizing.json"
RESULTS = ROOT / "bench" / "results"
ABOUT = (
    "Measured figures the pods in deploy/ are sized from (tests/deploy checks the pods "
    "against them); each part is written by the benchmark named in its command."
)


POINT = ("clients", "req_per_s", "mean_ms", "p99_ms", "status_503")  # per client count


def head(report: Mapping[str, Any]) -> dict[str, Any]:
    """What every part starts with: the command that measured it, and when."""
    return {"command": report["command"], "started": report["started"]}


def serve_part(report: Mapping[str, Any]) -> dict[str, Any]:
    """Per runtime x batching mode of a ``bench serve`` report: the settings the mode
    changed, idle and peak RSS, and req/s, latency and 503s per client count."""
    modes, keys = report["settings"].get("mode_settings", {}), POINT
    runs = []
    for model in report["models"]:
        rows = model["service"]
        for mode in dict.fromkeys(r["mode"] for r in rows):
            mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["clients"])
            run = {"runtime": model["runtime"], "mode": mode, "settings": modes.get(mode, {})}
            run |= {k: max(r[k] for r in mine) for k in ("idle_rss_mb", "peak_rss_mb")}
            runs.append(run | {"points": [{k: r[k] for k in keys} for r in mine]})
    return head(report) | {"cpus": report["environment"]["cpus"], "runs": runs}


def upload_part(report: Mapping[str, Any]) -> dict[str, Any]:
    """Memory held per byte of files in flight, per protocol and route."""
    keep = ("protocol", "route", "files_per_request", "rise_per_byte", "rise_per_body_byte")
    return head(report) | {"rows": [{k: r[k] for k in keep} for r in report["rows"]]}


def json_part(report: Mapping[str, Any]) -> dict[str, Any]:
    """Peak memory of the server and of a parsing process, per way of parsing."""
    return head(report) | {"sizes": report["sizes"], "memory": report["memory"]}


def decode_part(command: str, bytes_per_pixel: float) -> dict[str, Any]:
    """Peak decoding memory per pixel."""
    return {"command": command, "bytes_per_pixel": round(bytes_per_pixel, 1)}


def read() -> dict[str, Any]:
    """The table as it is on disk (empty parts if there is none yet)."""
    return json.loads(TABLE.read_text()) if TABLE.exists() else {"about": ABOUT}


def update(name: str, part: Mapping[str, Any]) -> None:
    """Replace one part of the table (``serve``, ``uploads``, ``json_parsing``, ``decode``)."""
    table = read()
    table.update(about=ABOUT, **{name: dict(part)})
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    print(f"wrote the {name!r} part of {TABLE.relative_to(ROOT)}")
