"""The same photos through the protocols, one server: closed-loop load per protocol.

Each ``--server`` (default: the service defaults) is a fresh ``python -m app`` with
gRPC on a free port. On it, for each client count, each of ``--forms`` gets a warm-up
and a measured window of C clients, each on its own connection, sending one photo
after another (``bench.clients``); the forms' order flips at every other count.
bench/README.md has the forms and the columns.

    .venv/bin/python -m bench protocols --clients 16,64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import harness
from bench.clients import PROTOCOLS, Opener, Send, failure, opener, photo_files, request_for
from bench.harness import CACHE, ROOT, Server, ints, named_settings, read_metrics, table, value
from bench.serve_load import batch_counters, cores, cpu_now, percentiles, served_runtime
from catdog.preprocessing import preprocess

SPLIT_TEST = ROOT / "data" / "split" / "test"


@dataclass
class Form:
    """A protocol and its input, how to open a client, the mean request size in bytes."""

    protocol: str
    kind: str
    opener: Opener
    payload: float


def make_form(protocol: str, url: str, address: str, photos: list[bytes]) -> Form:
    """One photo per request, each prepared as ``protocol`` carries it (``url``: the REST
    server; ``address``: its gRPC host:port); ``json-numbers`` sends the photo's pixels."""
    pixels = [preprocess(p)[None] for p in photos] if protocol == "json-numbers" else None
    requests = [request_for(protocol, [p], pixels and pixels[i]) for i, p in enumerate(photos)]
    kind = {"predict": "files", "json-numbers": "images"}.get(protocol, "image_bytes")
    payload = float(np.mean([len(body) for _, _, body in requests]))
    return Form(protocol, kind, opener(protocol, requests, url, address), payload)


async def send_until(send: Send, start: int, until: float, ok: list, failed: Counter) -> None:
    """One client: request ``start``, ``start + 1``, ... until ``until``; the latency of
    each answer that ends before it, or its failure (a status)."""
    turn = start
    while time.perf_counter() < until:
        sent, status = time.perf_counter(), None
        try:
            await send(turn)
        except Exception as exc:  # every failure is counted, none stops the load
            status = failure(exc)
        turn += 1
        if (done := time.perf_counter()) > until:
            break
        if status is None:
            ok.append(done - sent)
        else:
            failed[status] += 1


async def batches_now(url: str, drain: float = 60.0) -> tuple[float, float]:
    """The server's batch counters once it holds no image (or after ``drain`` s)."""
    async with httpx.AsyncClient(timeout=10) as client:
        until = time.perf_counter() + drain
        while time.perf_counter() < until:
            if value(metrics := await read_metrics(client, url), "catdog_images_in_flight") == 0:
                break
            await asyncio.sleep(0.1)
        return batch_counters(metrics)


async def load_row(server: Server, form: Form, clients: int, args: argparse.Namespace) -> dict:
    """A warm-up then a measured window of ``clients`` closed-loop clients, as a row.
    The window starts once the server holds no image."""
    async with AsyncExitStack() as stack:  # connections open before the warm-up
        sends = [await stack.enter_async_context(form.opener()) for _ in range(clients)]
        for seconds in (args.warmup, args.duration):
            batches = await batches_now(server.url)
            ok: list[float] = []
            fail: Counter[str] = Counter()
            before = cpu_now(server)
            until = before[0] + seconds
            await asyncio.gather(*(send_until(s, i, until, ok, fail) for i, s in enumerate(sends)))
            used = cores(before, cpu_now(server))
    after = await batches_now(server.url)
    images, calls = after[0] - batches[0], after[1] - batches[1]
    p50, p99 = percentiles(ok, 50, 99)
    return used | {
        "protocol": form.protocol,
        "kind": form.kind,
        "clients": clients,
        "rps": round(len(ok) / args.duration, 1),
        **{"p50": p50, "p99": p99, "ok": len(ok)},
        "other": ", ".join(f"{s}: {n}" for s, n in sorted(fail.items())) or "none",
        "body_kb": round(form.payload / 1024, 1),
        "mean_batch": round(images / calls, 1) if calls else None,
        "server_cpu_ms": round(used["server_s"] * 1000 / images, 2) if images else None,
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
