"""The gRPC APIs (Open Inference Protocol, TF Serving) beside REST: the same photos, one
server process.

One real service (``bench.harness``) serves ``--model-dir`` with its default settings
and ``CATDOG_GRPC_ADDRESS`` on a free port, so gRPC and REST share the process, the
batcher and the cores. The photos are ``tests/fixtures/photos`` plus ``--n-images``
from ``--images`` (``data/split/test`` when it exists, half cats, half dogs), the same
list in the same order for every protocol. Three parts:

1. **Closed-loop load**, one photo per request, for each of ``--clients``: a warm-up,
   then a measured window of C clients, each on its own connection, sending one photo
   after another and waiting for the answer: ``grpc`` (``ModelInfer``, ``image_bytes``
   as ``raw_input_contents``, ``tritonclient.grpc.aio``), ``tfs-grpc`` (TF Serving's
   ``Predict``, ``image_bytes`` as DT_STRING ``string_val``, ``grpc.aio`` with the
   request serialized once, as ``tf.make_tensor_proto`` builds it), ``rest-oip`` (``POST
   /v2/models/catdog/infer``, ``image_bytes`` as binary tensor data,
   ``tritonclient.http.aio``) and ``predict`` (``POST /predict``, multipart, httpx).
   Per row: answers/s, p50 and p99, other statuses, the mean batch the server ran and
   the cores the server, the load generator and anything else used. Each window's
   requests are answered and the server's ``catdog_images_in_flight`` is back to 0
   before the next starts; the protocols' order is reversed at every other count.
2. **Batches**, one request at a time: ``--batch-requests`` requests of 8 and 32 photos
   (after two unmeasured), median and p90: ``image_bytes`` over gRPC and REST OIP,
   ``/predict/batch``, and the same photos as pixels (``images``, FP32 [N, 224, 224, 3]
   scaled to [0, 1] by ``catdog.preprocessing``), raw over gRPC (``tensor_content`` for
   TF Serving), binary over REST. The
   forms take turns, request by request, so that the machine's drift hits all alike.
3. **Agreement**: every photo once per protocol, one per request, and every answer of
   part 2, against gRPC ``image_bytes`` one per request: max absolute difference of the
   probabilities, labels that differ.

The load generator shares the cores with the server (``--pin`` gives it the first
core and the server the rest): compare rows with each other.

    python -m bench.grpc_load --clients 1,8,32 --duration 10
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
from typing import Any

import httpx
import numpy as np

from bench.grpc_clients import (
    FIXTURES,
    PROTOCOLS,
    SPLIT_TEST,
    Data,
    Form,
    Send,
    failure,
    groups_of,
    make_form,
    photo_files,
)
from bench.grpc_report import render
from bench.harness import (
    CACHE,
    ROOT,
    Server,
    free_port,
    loadavg,
    new_report,
    read_metrics,
    split_cpus,
    uvicorn_server,
    value,
    write_report,
)
from bench.protocols import (
    Window,
    load_parser,
    send_until,
)
from bench.serve_load import batch_counters, machine_busy_seconds, served_runtime
from catdog.preprocessing import preprocess

# ---------------------------------------------------------------- part 1: closed-loop load


async def _send_until(send: Send, start: int, until: float, window: Window) -> None:
    """One client of ``send`` in ``protocols.send_until``'s closed loop."""

    async def attempt(turn: int) -> str | None:
        try:
            await send(turn)
        except Exception as exc:  # every failure is counted, none stops the load
            return failure(exc)
        return None

    await send_until(attempt, start, until, window)


def cpu_now(server: Server) -> tuple[float, float, float, float]:
    """(wall clock, server CPU, this process's CPU, all cores' busy time), in seconds."""
    return (
        time.perf_counter(),
        server.cpu_seconds() or 0.0,
        time.process_time(),
        machine_busy_seconds(),
    )


def cores(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """Cores the server, the load generator and anything else used between two
    :func:`cpu_now` (CPU seconds ÷ wall seconds), and the server's CPU seconds."""
    wall, server_s, client_s, busy_s = (b - a for a, b in zip(before, after))
    return {
        "server_s": round(server_s, 3),
        "server_cores": round(server_s / wall, 2),
        "client_cores": round(client_s / wall, 2),
        "other_cores": round(max(busy_s - server_s - client_s, 0.0) / wall, 2),
    }


async def drained(url: str, timeout: float = 60.0) -> float:
    """Seconds until the server holds no image (``catdog_images_in_flight`` is 0)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=10) as client:
        while time.perf_counter() - started < timeout:
            if value(await read_metrics(client, url), "catdog_images_in_flight") == 0:
                break
            await asyncio.sleep(0.1)
    return round(time.perf_counter() - started, 2)


async def load_row(
    server: Server, form: Form, clients: int, warmup: float, duration: float
) -> dict[str, Any]:
    """A warm-up then a measured window of ``clients`` closed-loop clients, as a row."""
    async with AsyncExitStack() as stack:  # connections open before the warm-up
        sends = [await stack.enter_async_context(form.opener()) for _ in range(clients)]
        warm = Window(form.protocol, clients, warmup)
        warm_until = time.perf_counter() + warmup
        await asyncio.gather(*(_send_until(s, i, warm_until, warm) for i, s in enumerate(sends)))
        await drained(server.url)
        async with httpx.AsyncClient(timeout=10) as probe:
            batches = batch_counters(await read_metrics(probe, server.url))
        window = Window(form.protocol, clients, duration)
        before = cpu_now(server)
        until = before[0] + duration
        await asyncio.gather(*(_send_until(s, i, until, window) for i, s in enumerate(sends)))
        used = cores(before, cpu_now(server))
    drain_s = await drained(server.url)
    async with httpx.AsyncClient(timeout=10) as probe:
        after = batch_counters(await read_metrics(probe, server.url))
    row = window.row(form.payload)
    images = after[0] - batches[0]
    return {
        **row,
        "kind": form.kind,
        "mean_batch": round(images / (after[1] - batches[1]), 1) if after[1] > batches[1] else None,
        **used,
        "server_cpu_ms": round(used["server_s"] * 1000 / images, 2) if images else None,
        "drain_s": drain_s,
    }


# ---------------------------------------------------------------- parts 2 and 3


async def interleaved(forms: list[Form], count: int, skip: int = 0) -> list[dict[str, Any]]:
    """One client per form, one request at a time: request ``turn`` of every form, then
    ``turn + 1`` of every form in the reverse order, and so on, so that the machine's
    drift spreads over all forms; the last ``count`` turns are timed. Per form: latencies
    (ms), failures and (photo, probabilities) of every answer."""
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
    ms = np.array(result["latencies"])
    size = len(form.groups[0])
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


def agreement(
    name: str, size: int, answers: list[tuple[int, np.ndarray]], reference: dict[int, np.ndarray]
) -> dict[str, Any]:
    """Max |difference| of ``answers`` from the reference probabilities, labels that differ."""
    pairs = [(p, reference[i]) for i, p in answers if i in reference]
    diffs = [float(np.max(np.abs(p - q))) for p, q in pairs]
    labels = sum(int(np.argmax(p) != np.argmax(q)) for p, q in pairs)
    return {
        "form": name,
        "images": size,
        "answers": len(diffs),
        "max_abs_diff": float(max(diffs)) if diffs else None,
        "labels_differ": labels,
    }


# ---------------------------------------------------------------- run and report


async def measure(
    args: argparse.Namespace, server: Server, address: str, data: Data
) -> dict[str, Any]:
    """The runtime the service reports, then parts 1, 2 and 3 against one server."""
    async with httpx.AsyncClient(timeout=10) as client:
        runtime = served_runtime(await read_metrics(client, server.url))
    photos = data[0]
    singles = [[i] for i in range(len(photos))]
    forms = {p: make_form(p, "image_bytes", singles, server, address, data) for p in PROTOCOLS}
    load: list[dict[str, Any]] = []
    for n, clients in enumerate(int(c) for c in args.clients.split(",")):
        for protocol in PROTOCOLS if n % 2 == 0 else PROTOCOLS[::-1]:  # drift favours none
            row = await load_row(server, forms[protocol], clients, args.warmup, args.duration)
            load.append(row)
            print(row, flush=True)
    load.sort(key=lambda r: (r["clients"], PROTOCOLS.index(r["protocol"])))
    # part 3's reference and the single-photo answers of each protocol
    runs = await interleaved([forms[p] for p in PROTOCOLS], len(photos))
    reference = dict(runs[0]["answers"])
    agree = [
        agreement(forms[p].name, 1, r["answers"], reference)
        for p, r in zip(PROTOCOLS[1:], runs[1:])
    ]
    batches: list[dict[str, Any]] = []
    used: dict[int, dict[str, float]] = {}  # cores over each batch size's rows
    kinds = [(p, "image_bytes") for p in PROTOCOLS] + [(p, "images") for p in PROTOCOLS[:3]]
    for size in (int(s) for s in args.batch_sizes.split(",")):
        groups = groups_of(size, args.batch_requests + 2, len(photos))
        sized = [make_form(p, kind, groups, server, address, data) for p, kind in kinds]
        before = cpu_now(server)
        results = await interleaved(sized, args.batch_requests, skip=2)
        used[size] = cores(before, cpu_now(server))
        for form, result in zip(sized, results):
            batches.append(batch_row(form, result))
            agree.append(agreement(form.name, size, result["answers"], reference))
            print(batches[-1], flush=True)
    return {
        "runtime": runtime,
        "load": load,
        "batches": batches,
        "batch_cores": used,
        "agreement": agree,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = load_parser("bench.grpc_load", __doc__, "grpc-load.md", n_images=44)
    parser.set_defaults(images=SPLIT_TEST if SPLIT_TEST.is_dir() else FIXTURES)
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--batch-sizes", default="8,32", help="photos per request in part 2")
    parser.add_argument("--batch-requests", type=int, default=20, help="timed requests per form")
    pin = "load generator on the first core, server on the rest (default: they share them)"
    parser.add_argument("--pin", action="store_true", help=pin)
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. the load)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve REST and gRPC, measure the three parts, write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    files = photo_files(args.images, args.n_images)
    photos = [f.read_bytes() for f in files]
    pixels = np.stack([preprocess(p) for p in photos]).astype(np.float32)
    client_cpus, server_cpus = split_cpus(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    report = new_report(
        "bench.grpc_load",
        argv,
        photos=len(photos),
        photo_sources=sorted({str(f.parent.relative_to(ROOT)) for f in files}),
        pinning="pinned" if client_cpus else "unpinned",
    )
    address = f"127.0.0.1:{free_port()}"
    log = CACHE / "grpc-load" / "server.log"
    with uvicorn_server(args.model_dir, log, cpus=server_cpus, grpc_address=address) as server:
        environment = report["environment"]
        environment["server_cpus"] = sorted(os.sched_getaffinity(server.process.pid))
        environment["client_cpus"] = sorted(os.sched_getaffinity(0))
        report.update(asyncio.run(measure(args, server, address, (photos, pixels))))
        environment["runtime"] = report.pop("runtime")
        report["peak_rss_mb"] = server.peak_rss_mb
    report["environment"]["loadavg_end"] = loadavg()
    diffs = [a["max_abs_diff"] for a in report["agreement"] if a["max_abs_diff"] is not None]
    print(f"max abs difference of probabilities across protocols: {max(diffs, default=None)}")
    write_report(report, render(report, args), args.out)


if __name__ == "__main__":
    main()
