"""The same photos through the protocols, one server: closed-loop load per protocol.

Each ``--server`` (default: the service defaults) is a fresh ``python -m app`` with
gRPC on a free port. On it, for each client count, each of ``--forms`` gets a warm-up
and a measured window of C clients (``bench.serve_load``'s closed loop), each on its own
connection, sending one photo after another (``bench.clients``); the forms' order flips
at every other count. bench/README.md has the forms and the columns.

    .venv/bin/python -m bench protocols --clients 16,64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import harness
from bench.clients import PROTOCOLS, opener, photo_files, request_for
from bench.harness import CACHE, ROOT, Server, ints, named_settings, read_metrics, table
from bench.serve_load import CORES, Client, run_load, served_runtime, summarize
from catdog.preprocessing import preprocess

SPLIT_TEST = ROOT / "data" / "split" / "test"


@dataclass
class Form:
    """A protocol and its input, how to open a client, the mean request size in bytes."""

    protocol: str
    kind: str
    opener: Client
    payload: float


def make_form(protocol: str, url: str, address: str, photos: list[bytes]) -> Form:
    """One photo per request, each prepared as ``protocol`` carries it (``url``: the REST
    server; ``address``: its gRPC host:port); ``json-numbers`` sends the photo's pixels."""
    pixels = [preprocess(p)[None] for p in photos] if protocol == "json-numbers" else None
    requests = [request_for(protocol, [p], pixels and pixels[i]) for i, p in enumerate(photos)]
    kind = {"predict": "files", "json-numbers": "images"}.get(protocol, "image_bytes")
    payload = float(np.mean([len(body) for _, _, body in requests]))
    return Form(protocol, kind, opener(protocol, requests, url, address), payload)


async def load_row(server: Server, form: Form, clients: int, args: argparse.Namespace) -> dict:
    """A warm-up then a measured window of ``clients`` closed-loop clients, as a row."""
    result = await run_load(server, None, clients, args, opener=form.opener)
    row, used = summarize(result), result.cores
    failed = {str(s): n for s, n in result.statuses.items() if s != 200} | dict(result.errors)
    images = result.batch_sum
    return {"protocol": form.protocol, "kind": form.kind, "clients": clients} | {
        "rps": row["req_per_s"],
        **{"p50": row["p50_ms"], "p99": row["p99_ms"], "ok": row["ok_in_window"]},
        "other": ", ".join(f"{s}: {n}" for s, n in sorted(failed.items())) or "none",
        "body_kb": round(form.payload / 1024, 1),
        "mean_batch": row["mean_batch"],
        "server_cpu_ms": round(used["server_s"] * 1000 / images, 2) if images else None,
        **{f"{who}_cores": used[f"{who}_cores"] for who in CORES},
    }


async def measure(args: argparse.Namespace, server: Server, address: str, photos: list) -> dict:
    """The runtime the service reports, and the load rows."""
    async with httpx.AsyncClient(timeout=10) as client:
        runtime = served_runtime(await read_metrics(client, server.url))
    forms = {p: make_form(p, server.url, address, photos) for p in args.forms}
    load = []
    for n, clients in enumerate(args.clients):
        for protocol in args.forms if n % 2 == 0 else args.forms[::-1]:  # drift favours none
            load.append(await load_row(server, forms[protocol], clients, args))
            print(load[-1], flush=True)
    load.sort(key=lambda r: (r["clients"], args.forms.index(r["protocol"])))
    return {"runtime": runtime, "load": load}


LOAD = [("server", "server"), ("protocol", "protocol"), ("input", "kind")]
LOAD += [("clients", "clients"), ("answers/s", "rps"), ("p50 ms", "p50"), ("p99 ms", "p99")]
LOAD += [("answered", "ok"), ("errors", "other"), ("request kB", "body_kb")]
LOAD += [("mean batch", "mean_batch"), ("server CPU ms/image", "server_cpu_ms")]
LOAD += [(f"{who} cores", f"{who}_cores") for who in ("server", "client", "other")]


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown report."""
    env = report["environment"]
    servers = "; ".join(
        f"`{name}` ({', '.join(f'{k}={v}' for k, v in s['settings'].items()) or 'defaults'}; "
        f"{s['runtime']}, peak RSS {s['peak_rss_mb']} MB)"
        for name, s in report["servers"].items()
    )
    about = (
        f"{report['started']}, {env['cpus']} cores, {env['pinning']}; model "
        f"{args.model_dir.name}; {env['photos']} photos from {', '.join(env['photo_sources'])},"
        f" the same list for every form; {args.warmup:g} s warm-up then {args.duration:g} s"
        f" per row. Load average {env['loadavg_start']} at start, {env['loadavg_end']} at end."
        f" Servers: {servers}. {args.note}"
    )
    body = table(report["load"], LOAD, ("server", "protocol", "kind", "other"))
    return harness.markdown("The protocols side by side", report, about.strip(), body)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = harness.parser("protocols", __doc__, "protocols.md")
    add = p.add_argument
    add("--images", type=Path, default=SPLIT_TEST, help="photos beside tests/fixtures/photos")
    add("--n-images", type=int, default=32)
    add("--forms", default="oip-binary,oip-json,predict", help=f"of {','.join(PROTOCOLS)}")
    add("--clients", type=ints, default=[16, 64], help="client counts, e.g. 1,8,32")
    add("--warmup", type=float, default=2.0, help="seconds before each window")
    add("--duration", type=float, default=10.0, help="seconds of each window")
    servers = "a server with these settings (repeatable; default: the service defaults)"
    add("--server", type=named_settings, action="append", default=[], help=servers)
    add("--pin", action="store_true", help="load generator on the first core, server the rest")
    add("--seed", type=int, default=0, help="of the order each client sends the photos in")
    add("--note", default="", help="a sentence for the report (e.g. the load)")
    args = p.parse_args(argv)
    args.forms = [f for f in args.forms.split(",") if f]
    if unknown := set(args.forms) - set(PROTOCOLS):
        p.error(f"unknown forms {sorted(unknown)}; choose from {', '.join(PROTOCOLS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Each server in turn: every form at each client count; the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    files = photo_files(args.images, args.n_images)
    photos = [f.read_bytes() for f in files]
    client_cpus, server_cpus = harness.split_cpus(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    folders = {f.parent.absolute() for f in files}
    sources = sorted(str(d.relative_to(ROOT) if d.is_relative_to(ROOT) else d) for d in folders)
    pinning = "pinned" if client_cpus else "unpinned"
    report = harness.new_report("bench.protocols", argv, photos=len(files), photo_sources=sources)
    report["environment"]["pinning"], report["servers"], report["load"] = pinning, {}, []
    for name, settings in args.server or [("defaults", {})]:
        address = f"127.0.0.1:{harness.free_port()}"
        log = CACHE / "logs" / f"protocols-{name}.log"
        with harness.uvicorn_server(
            args.model_dir, log, cpus=server_cpus, grpc_address=address, **settings
        ) as server:
            measured = asyncio.run(measure(args, server, address, photos))
            measured["peak_rss_mb"], measured["settings"] = server.peak_rss_mb, settings
        report["load"] += [{"server": name, **row} for row in measured.pop("load")]
        report["servers"][name] = measured
    report["environment"]["loadavg_end"] = harness.loadavg()
    harness.write_report(report, render(report, args), args.out)


if __name__ == "__main__":
    main()
