"""The same photos through the protocols, one server: closed-loop load, batches, agreement.

Each ``--server`` (default: the service defaults) is a fresh ``python -m app`` with
gRPC on a free port. On it, for each client count, each of ``--forms`` gets a warm-up
and a measured window of C clients, each on its own connection, sending one photo
after another (``bench.clients``); the forms' order flips at every other count. With
``--batch-sizes``, requests of N photos one at a time, every form of files and of
pixels taking turns; and every answer against gRPC's. bench/README.md has the forms
and the columns.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import harness
from bench.clients import PROTOCOLS, Data, Form, Send, failure, groups_of, make_form, photo_files
from bench.harness import (
    CACHE,
    ROOT,
    Server,
    free_port,
    ints,
    loadavg,
    markdown,
    new_report,
    read_metrics,
    split_cpus,
    table,
    uvicorn_server,
    value,
    write_report,
)
from bench.serve_load import batch_counters, machine_busy_seconds, served_runtime
from catdog.preprocessing import preprocess

SPLIT_TEST = ROOT / "data" / "split" / "test"
PIXELS = ("grpc", "tfs-grpc", "oip-binary")  # the forms that also send pixels in batches


@dataclass
class Window:
    """What C clients saw in one measured window."""

    protocol: str
    clients: int
    duration: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def row(self, body_bytes: float) -> dict[str, Any]:
        """A report row."""
        ok = np.array(self.latencies) * 1000
        p50, p99 = np.percentile(ok, [50, 99]) if len(ok) else (None, None)
        return {
            "protocol": self.protocol,
            "clients": self.clients,
            "rps": round(len(ok) / self.duration, 1),
            "p50": None if p50 is None else round(float(p50), 1),
            "p99": None if p99 is None else round(float(p99), 1),
            "ok": len(ok),
            "other": ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())) or "none",
            "body_kb": round(body_bytes / 1024, 1),
        }


async def send_until(
    send: Send, start: int, until: float, window: Window, wait: bool = False
) -> None:
    """One client: request ``start``, ``start + 1``, ... until ``until``; record the
    answers that end before it (a failure as its status; with ``wait``, a refusal's
    ``Retry-After`` is waited out after it, as a well-behaved client does)."""
    turn = start
    while time.perf_counter() < until:
        sent, status, pause = time.perf_counter(), None, 0.0
        try:
            await send(turn)
        except Exception as exc:  # every failure is counted, none stops the load
            status = failure(exc)
            if wait and isinstance(exc, httpx.HTTPStatusError):
                pause = float(exc.response.headers.get("retry-after", "0"))
        turn += 1
        if (done := time.perf_counter()) > until:
            break
        if status is None:
            window.latencies.append(done - sent)
        else:
            window.statuses[status] += 1
        await asyncio.sleep(pause)


def cpu_now(server: Server) -> tuple[float, float, float, float]:
    """(wall clock, server CPU, this process's CPU, all cores' busy time), in seconds."""
    busy = machine_busy_seconds()
    return time.perf_counter(), server.cpu_seconds() or 0.0, time.process_time(), busy


def cores(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """Cores the server, the load generator and anything else used between two
    :func:`cpu_now` (CPU seconds ÷ wall seconds), and the server's CPU seconds."""
    wall, server_s, client_s, busy_s = (b - a for a, b in zip(before, after))
    other = max(busy_s - server_s - client_s, 0.0)
    named = {"server": server_s, "client": client_s, "other": other}
    return {"server_s": round(server_s, 3)} | {
        f"{who}_cores": round(seconds / wall, 2) for who, seconds in named.items()
    }


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
    """A warm-up then a measured window of ``clients`` closed-loop clients, as a row."""
    async with AsyncExitStack() as stack:  # connections open before the warm-up
        sends = [await stack.enter_async_context(form.opener()) for _ in range(clients)]
        for seconds in (args.warmup, args.duration):
            batches = await batches_now(server.url)
            window = Window(form.protocol, clients, seconds)
            before = cpu_now(server)
            until = before[0] + seconds
            await asyncio.gather(*(send_until(s, i, until, window) for i, s in enumerate(sends)))
            used = cores(before, cpu_now(server))
    after = await batches_now(server.url)
    images, calls = after[0] - batches[0], after[1] - batches[1]
    return (
        window.row(form.payload)
        | used
        | {
            "kind": form.kind,
            "mean_batch": round(images / calls, 1) if calls else None,
            "server_cpu_ms": round(used["server_s"] * 1000 / images, 2) if images else None,
        }
    )


async def interleaved(forms: list[Form], count: int, skip: int = 0) -> list[dict[str, Any]]:
    """One client per form, one request at a time: request ``turn`` of every form, then
    ``turn + 1`` in the reverse order, and so on, so the machine's drift spreads over all
    forms; the last ``count`` turns are timed. Per form: latencies (ms), failures and
    (photo, probabilities) of every answer."""
    results = [{"latencies": [], "failures": Counter(), "answers": []} for _ in forms]
    async with AsyncExitStack() as stack:
        sends = [await stack.enter_async_context(form.opener()) for form in forms]
        for turn in range(skip + count):
            order = list(range(len(forms)))
            for k in order if turn % 2 == 0 else order[::-1]:
                sent = time.perf_counter()
                try:
                    probabilities = await sends[k](turn)
                except Exception as exc:  # counted and reported
                    results[k]["failures"][failure(exc)] += 1
                    continue
                if turn >= skip:
                    results[k]["latencies"].append((time.perf_counter() - sent) * 1000)
                group = forms[k].groups[turn % len(forms[k].groups)]
                results[k]["answers"] += zip(group, np.asarray(probabilities, dtype=np.float64))
    return results


def batch_row(form: Form, result: dict[str, Any]) -> dict[str, Any]:
    """Median and p90 of one form's timed requests."""
    ms, size = np.array(result["latencies"]), len(form.groups[0])
    median = float(np.median(ms)) if len(ms) else None
    return {
        "protocol": form.protocol,
        "kind": form.kind,
        "images": size,
        "payload_mb": round(form.payload / 1e6, 2),
        "median": round(median, 1) if median else None,
        "p90": round(float(np.percentile(ms, 90)), 1) if len(ms) else None,
        "images_per_s": round(size * 1000 / median, 1) if median else None,
        "requests": len(ms),
        "other": ", ".join(f"{k}: {n}" for k, n in sorted(result["failures"].items())) or "none",
    }


def agreement(name: str, size: int, answers: list, reference: dict) -> dict[str, Any]:
    """Max |difference| of ``answers`` from the reference probabilities, labels that differ."""
    pairs = [(p, reference[i]) for i, p in answers if i in reference]
    diffs = [float(np.max(np.abs(p - q))) for p, q in pairs]
    labels = sum(int(np.argmax(p) != np.argmax(q)) for p, q in pairs)
    worst = f"{max(diffs):.2e}" if diffs else None
    return {"form": name, "images": size, "answers": len(diffs), "max_abs_diff": worst} | {
        "labels_differ": labels
    }


async def measure(args: argparse.Namespace, server: Server, address: str, data: Data) -> dict:
    """The runtime the service reports, the load rows, then batches and agreement."""
    async with httpx.AsyncClient(timeout=10) as client:
        runtime = served_runtime(await read_metrics(client, server.url))
    singles = [[i] for i in range(len(data[0]))]
    kind = {p: "images" if p == "json-numbers" else "image_bytes" for p in args.forms}
    forms = {p: make_form(p, kind[p], singles, server.url, address, data) for p in args.forms}
    load = []
    for n, clients in enumerate(args.clients):
        for protocol in args.forms if n % 2 == 0 else args.forms[::-1]:  # drift favours none
            load.append(await load_row(server, forms[protocol], clients, args))
            print(load[-1], flush=True)
    load.sort(key=lambda r: (r["clients"], args.forms.index(r["protocol"])))
    if not args.batch_sizes:
        return {"runtime": runtime, "load": load}
    runs = await interleaved(list(forms.values()), len(singles))  # the single-photo answers
    reference = dict(runs[0]["answers"])
    agree = [agreement(f.name, 1, r["answers"], reference) for f, r in zip(forms.values(), runs)]
    batches, used = [], {}
    kinds = [(p, "image_bytes") for p in args.forms if p != "json-numbers"]
    kinds += [(p, "images") for p in args.forms if p in PIXELS]
    for size in args.batch_sizes:
        groups = groups_of(size, args.batch_requests + 2, len(singles))
        sized = [make_form(p, kind, groups, server.url, address, data) for p, kind in kinds]
        before = cpu_now(server)
        results = await interleaved(sized, args.batch_requests, skip=2)
        used[size] = cores(before, cpu_now(server))
        for form, result in zip(sized, results):
            batches.append(batch_row(form, result))
            agree.append(agreement(form.name, size, result["answers"], reference))
            print(batches[-1], flush=True)
    return {"runtime": runtime, "load": load, "batches": batches, "batch_cores": used} | {
        "agreement": agree[1:]
    }


LOAD = [("server", "server"), ("protocol", "protocol"), ("input", "kind")]
LOAD += [("clients", "clients"), ("answers/s", "rps"), ("p50 ms", "p50"), ("p99 ms", "p99")]
LOAD += [("answered", "ok"), ("errors", "other"), ("request kB", "body_kb")]
LOAD += [("mean batch", "mean_batch"), ("server CPU ms/image", "server_cpu_ms")]
LOAD += [(f"{who} cores", f"{who}_cores") for who in ("server", "client", "other")]
BATCH = [("protocol", "protocol"), ("input", "kind"), ("images/request", "images")]
BATCH += [("payload MB", "payload_mb"), ("median ms", "median"), ("p90 ms", "p90")]
BATCH += [("images/s at median", "images_per_s"), ("requests", "requests"), ("errors", "other")]
AGREE = [("form", "form"), ("images/request", "images"), ("answers compared", "answers")]
AGREE += [("max abs difference", "max_abs_diff"), ("labels differ", "labels_differ")]


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
    text = ("server", "protocol", "kind", "other", "form")
    body = table(report["load"], LOAD, text)
    for name, server in report["servers"].items():
        if not server.get("batches"):
            continue
        cpu = "; ".join(
            f"{size} images: server {c['server_cores']}, client {c['client_cores']}, other "
            f"{c['other_cores']} cores"
            for size, c in server["batch_cores"].items()
        )
        body += ["", f"## Batches on `{name}`, one request at a time ({cpu})", ""]
        body += [*table(server["batches"], BATCH, text), "", "Against gRPC `image_bytes`:", ""]
        body += table(server["agreement"], AGREE, text)
    return markdown(args.title, report, about.strip(), body)


def server_arg(text: str) -> tuple[str, dict[str, str]]:
    """``"slow:json_fast_tensors=false"`` -> ``("slow", {"json_fast_tensors": "false"})``."""
    name, _, settings = text.partition(":")
    return name, dict(item.split("=", 1) for item in settings.split(",") if "=" in item)


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
    add("--server", type=server_arg, action="append", default=[], help=servers)
    add("--batch-sizes", type=ints, default=[], help="photos per request in batches, e.g. 8,32")
    add("--batch-requests", type=int, default=20, help="timed requests per form and size")
    add("--pin", action="store_true", help="load generator on the first core, server the rest")
    add("--note", default="", help="a sentence for the report (e.g. the load)")
    add("--title", default="The protocols side by side", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.forms = [f for f in args.forms.split(",") if f]
    if unknown := set(args.forms) - set(PROTOCOLS):
        p.error(f"unknown forms {sorted(unknown)}; choose from {', '.join(PROTOCOLS)}")
    if args.batch_sizes and args.forms[0] != "grpc":
        p.error("--batch-sizes compares every answer with gRPC's: put grpc first in --forms")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Each server in turn: every form at each client count (and the batches); the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    files = photo_files(args.images, args.n_images)
    photos = [f.read_bytes() for f in files]
    data = photos, np.stack([preprocess(p) for p in photos]).astype(np.float32)
    client_cpus, server_cpus = split_cpus(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    folders = {f.parent.absolute() for f in files}
    sources = sorted(str(d.relative_to(ROOT) if d.is_relative_to(ROOT) else d) for d in folders)
    pinning = "pinned" if client_cpus else "unpinned"
    report = new_report("bench.protocols", argv, photos=len(files), photo_sources=sources)
    report["environment"]["pinning"], report["servers"], report["load"] = pinning, {}, []
    for name, settings in args.server or [("defaults", {})]:
        address = f"127.0.0.1:{free_port()}"
        log = CACHE / "logs" / f"protocols-{name}.log"
        with uvicorn_server(
            args.model_dir, log, cpus=server_cpus, grpc_address=address, **settings
        ) as server:
            measured = asyncio.run(measure(args, server, address, data))
            measured["peak_rss_mb"], measured["settings"] = server.peak_rss_mb, settings
        report["load"] += [{"server": name, **row} for row in measured.pop("load")]
        report["servers"][name] = measured
    report["environment"]["loadavg_end"] = loadavg()
    write_report(report, render(report, args), args.out)


if __name__ == "__main__":
    main()
