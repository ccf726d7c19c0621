"""Clients that send pixels as JSON numbers, under load: read by the fast path or by pydantic.

A TF Serving client often sends ``{"instances": [[[[r, g, b], ...]]]}``: one photo,
resized to the model's input and scaled, as JSON numbers (150,528 values, ~3 MB). Two
servers, one after the other, each a fresh ``python -m app`` with the shipped model on
LiteRT and the default settings but one: the fast path (``app/protocols/numbers.py``,
the default) and pydantic (``CATDOG_JSON_FAST_TENSORS=false``). On each, for each client
count: a warm-up and a measured window of closed-loop load (``bench.protocols``) of the
JSON bodies, then the same of the same photos as files to ``/predict``, as a control.

Reported per server, form and client count: answers per second, latency p50 and p99,
other statuses, body size. The load generator shares the 2 cores with the server, and
building each JSON body's request costs it too: compare rows with each other.

    python -m bench.json_load --clients 1,8,32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from bench.harness import CACHE, markdown, new_report, table, uvicorn_server, write_report
from bench.protocols import (
    Body,
    load_parser,
    load_photos,
    mean_size,
    request_bodies,
    run_window,
)
from catdog.preprocessing import preprocess

PREDICT = "/v1/models/catdog:predict"
SERVERS = {"fast (default)": {}, "pydantic": {"json_fast_tensors": False}}
FORMS = ("JSON numbers", "file to /predict")


def number_bodies(photos: list[bytes]) -> list[Body]:
    """One ``:predict`` body per photo: its pixels as the service would make them."""
    bodies: list[Body] = []
    for photo in photos:
        content = json.dumps({"instances": [preprocess(photo).tolist()]}).encode()
        bodies.append((PREDICT, content, {"content-type": "application/json"}))
    return bodies


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = load_parser("bench.json_load", __doc__, "json-load.md", n_images=16)
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Each server in turn, each form at each client count; write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    photos = load_photos(args.images, args.n_images)
    bodies = {FORMS[0]: number_bodies(photos), FORMS[1]: request_bodies("predict", photos, "")}
    report = new_report("bench.json_load", argv, photos=len(photos))
    rows: list[dict[str, object]] = []
    for name, settings in SERVERS.items():
        log = CACHE / "json-load" / f"{name.split()[0]}.log"
        with uvicorn_server(args.model_dir, log, runtime="litert", **settings) as server:
            for clients in (int(c) for c in args.clients.split(",")):
                for form, prepared in bodies.items():
                    window = asyncio.run(
                        run_window(server.url, form, prepared, clients, args.warmup, args.duration)
                    )
                    rows.append({"server": name, **window.row(mean_size(prepared))})
                    print(rows[-1], flush=True)
    report["rows"] = rows
    write_report(report, render(report, args), args.out)


def render(report: dict[str, object], args: argparse.Namespace) -> str:
    """The markdown report."""
    environment = report["environment"]
    assert isinstance(environment, dict)
    columns = [
        ("JSON read by", "server"),
        ("request", "protocol"),
        ("clients", "clients"),
        ("answers/s", "rps"),
        ("p50 ms", "p50"),
        ("p99 ms", "p99"),
        ("answered", "ok"),
        ("other statuses", "other"),
        ("request body kB", "body_kb"),
    ]
    rows = report["rows"]
    assert isinstance(rows, list)
    about = (
        f"{report['started']}, {environment['cpus']} cores (server and load generator"
        f" share them), LiteRT, model {args.model_dir.name}, {environment['photos']}"
        f" photos from {args.images.name} sent in turn, closed loop, {args.warmup:g} s"
        f" warm-up then {args.duration:g} s measured per row, one run; load average at"
        f" start {environment['loadavg_start']}."
    )
    title = "Pixels as JSON numbers under load: the fast path and pydantic"
    return markdown(
        title, report, about, table(rows, columns, text=("server", "protocol", "other"))
    )


if __name__ == "__main__":
    main()
