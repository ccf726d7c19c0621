"""Memory a pod holds for uploads: a LiteRT server's RSS while its admission cap is full
of files at the upload limit, per route and files per request.

Each row is a fresh server (``CATDOG_BODY_BYTES_BUDGET=0``, so every body sent is held).
Clients send at once as many requests as fill the images a server admits, each file a
test photo padded with zero bytes to the upload limit (decoders stop at the end-of-image
marker, so the rise is the uploads'); every answer must be 200. Per row: idle and peak
RSS, the rise per byte of the files and of the bodies held, and the JSON parsing
process's peak. The pods' memory limits are sized from it (``deploy/sizing.json``).

    .venv/bin/python -m bench upload_memory --out bench/results/upload-memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness, sizing
from bench.clients import Request, opener, request_for
from bench.harness import CACHE, ROOT, descendants, free_port, memory_mb, table, uvicorn_server
from bench.protocols import SPLIT_TEST
from bench.serve_load import Client

PROTOCOLS = ("multipart", "oip-binary", "oip-json", "tfs-json", "grpc", "tfs-grpc", "tfs-numbers")
SENT_AS = {"multipart": "predict", "tfs-numbers": "json-numbers"}  # bench.clients' names


def padded_photo(folder: Path, size: int) -> bytes:
    """A photo followed by zero bytes, ``size`` bytes in all."""
    photos = sorted(folder.rglob("*.jpg")) or sorted((ROOT / "tests/fixtures/photos").glob("*.jpg"))
    photo = photos[0].read_bytes()
    return photo + bytes(size - len(photo))


def request_of(protocol: str, file: bytes, count: int, side: tuple[int, int]) -> Request:
    """One request carrying ``count`` copies of ``file`` the way ``protocol`` sends them (for
    ``tfs-numbers``: ``count`` images of ``side`` pixels as JSON numbers instead)."""
    if protocol == "tfs-numbers":
        return request_for("json-numbers", [], np.full((count, *side, 3), 0.501961))
    return request_for(SENT_AS.get(protocol, protocol), [file] * count)


async def fill(send_with: Client, at_once: int, rounds: int) -> list[dict]:
    """``rounds`` times, ``at_once`` requests sent together, each client on its own
    connection; the outcomes of each round (200, or what failed)."""
    rng = random.Random(0)
    async with AsyncExitStack() as stack:
        sends = [await stack.enter_async_context(send_with()) for _ in range(at_once)]
        counts = []
        for _ in range(rounds):
            outcomes = [o for _, o in await asyncio.gather(*(send(rng) for send in sends))]
            counts.append({c: outcomes.count(c) for c in set(outcomes)})
    return counts


def measure(protocol: str, per_request: int, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh server, filled ``args.rounds`` times through ``protocol``."""
    from catdog.runtimes import latest_version

    at_once = args.images // per_request
    metadata = json.loads((latest_version(args.model_dir) / "metadata.json").read_text())
    side = tuple(metadata["image_size"])
    request = request_of(protocol, padded_photo(args.photos, args.bytes), per_request, side)
    address = f"127.0.0.1:{free_port()}"
    log = CACHE / "logs" / f"upload-memory-{protocol}.log"
    settings = {"runtime": "litert", "grpc_address": address, "body_bytes_budget": 0}
    with uvicorn_server(args.model_dir, log, **settings) as server:
        pid = server.process.pid
        idle = memory_mb(pid)["VmRSS"]
        send_with = opener(SENT_AS.get(protocol, protocol), [request], server.url, address)
        counts = asyncio.run(fill(send_with, at_once, args.rounds))
        peak = memory_mb(pid)["VmHWM"]
        parser = sum(memory_mb(child)["VmHWM"] for child in descendants(pid))
    if any(set(c) != {200} for c in counts):
        raise SystemExit(f"{protocol} x {per_request}: not every request answered 200: {counts}")
    files_mb, bodies_mb = at_once * per_request * args.bytes / 1e6, at_once * len(request[2]) / 1e6
    row = {"protocol": protocol, "route": request[0], "requests": at_once}
    row |= {"files_per_request": per_request, "file_mb": round(args.bytes / 1e6, 2)}
    row |= {"body_mb": round(len(request[2]) / 1e6, 2), "idle_rss_mb": round(idle, 1)}
    row |= {"peak_rss_mb": round(peak, 1), "rise_mb": round(peak - idle, 1)}
    row |= {"parser_peak_mb": round(parser, 1), "rise_per_byte": round((peak - idle) / files_mb, 2)}
    return row | {"rise_per_body_byte": round((peak - idle) / bodies_mb, 2)}


COLUMNS = [("protocol", "protocol"), ("route", "route"), ("requests at once", "requests")]
COLUMNS += [("files each", "files_per_request"), ("file MB", "file_mb"), ("body MB", "body_mb")]
COLUMNS += [("idle RSS MB", "idle_rss_mb"), ("peak RSS MB", "peak_rss_mb"), ("rise MB", "rise_mb")]
COLUMNS += [("rise per byte of the files", "rise_per_byte")]
COLUMNS += [("per body byte", "rise_per_body_byte"), ("parser peak MB", "parser_peak_mb")]


def main(argv: Sequence[str] | None = None) -> None:
    """Measure every protocol x files-per-request asked for; print (and save) the table."""
    from app.core.config import Settings

    argv = list(sys.argv[1:] if argv is None else argv)
    settings = Settings()  # the app's defaults, which the measured servers run with
    p = harness.parser("upload_memory", __doc__)
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    p.add_argument("--per-request", default=f"1,{settings.max_files_per_request}", help="files")
    p.add_argument("--images", type=int, default=settings.max_images_in_flight, help="held at once")
    p.add_argument("--bytes", type=int, default=settings.max_upload_bytes, help="per file")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--photos", type=Path, default=SPLIT_TEST, help="the photo padded")
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    protocols = args.protocols.split(",")
    if unknown := set(protocols) - set(PROTOCOLS):
        p.error(f"unknown protocols {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    counts = [int(n) for n in args.per_request.split(",")]
    rows = [measure(x, n, args) for x in protocols for n in counts]
    report = harness.new_report("bench.upload_memory", argv)
    cpus = report["environment"]["cpus"]
    report["environment"] = f"{cpus} CPUs; LiteRT, {args.model_dir}; {args.rounds} rounds per row"
    report["settings"] = {"max_images_in_flight": args.images, "max_upload_bytes": args.bytes}
    report["rows"] = rows
    print(report["environment"], *table(rows, COLUMNS, {"protocol", "route"}), sep="\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        sizing.update("uploads", sizing.upload_part(report))


if __name__ == "__main__":
    main()
