"""The markdown of ``bench grpc_load``: the load rows, the batch rows and the agreement."""

from __future__ import annotations

import argparse
from typing import Any

from bench.harness import (
    markdown,
    table,
)

BUSY = 0.25  # other processes' cores from which a row is said to be disturbed


def busy_rows(rows: list[dict[str, Any]]) -> list[str]:
    """A sentence naming the rows during which something else used ``BUSY`` cores or more."""
    busy = [f"{r['protocol']} at {r['clients']}" for r in rows if r["other_cores"] >= BUSY]
    if not busy:
        return []
    return [f"Something else ran during {', '.join(busy)} (other cores ≥ {BUSY}).", ""]


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown report."""
    env = report["environment"]
    about = (
        f"{report['started']}, {env['cpus']} cores, {env['pinning']} (server on CPUs"
        f" {env['server_cpus']}, load generator on {env['client_cpus']}), runtime"
        f" {env.get('runtime')}, model {args.model_dir.name}, service defaults plus"
        f" CATDOG_GRPC_ADDRESS, one server process for every row; {env['photos']} photos from"
        f" {', '.join(env['photo_sources'])}, the same list for every protocol. Load:"
        f" {args.warmup:g} s warm-up then {args.duration:g} s measured per row, each client on"
        f" its own connection. Load average at start {env['loadavg_start']}, at end"
        f" {env['loadavg_end']}; server peak RSS {report.get('peak_rss_mb')} MB. {args.note}"
    ).strip()
    load_columns = [
        ("protocol", "protocol"),
        ("clients", "clients"),
        ("answers/s", "rps"),
        ("p50 ms", "p50"),
        ("p99 ms", "p99"),
        ("answered", "ok"),
        ("errors", "other"),
        ("request kB", "body_kb"),
        ("mean batch", "mean_batch"),
        ("server CPU ms/image", "server_cpu_ms"),
        ("server cores", "server_cores"),
        ("client cores", "client_cores"),
        ("other cores", "other_cores"),
    ]
    batch_columns = [
        ("protocol", "protocol"),
        ("input", "kind"),
        ("images/request", "images"),
        ("payload MB", "payload_mb"),
        ("median ms", "median"),
        ("p90 ms", "p90"),
        ("images/s at median", "images_per_s"),
        ("requests", "requests"),
        ("errors", "other"),
    ]
    agree_columns = [
        ("form", "form"),
        ("images/request", "images"),
        ("answers compared", "answers"),
        ("max abs difference", "max_abs_diff"),
        ("labels differ", "labels_differ"),
    ]
    agree = [{**a, "max_abs_diff": f"{a['max_abs_diff']:.2e}"} for a in report["agreement"]]
    body = [
        "## Closed-loop load, one photo per request",
        "",
        "`grpc`: ModelInfer, `image_bytes` raw (tritonclient.grpc.aio); `rest-oip`: POST"
        " /v2/models/catdog/infer, `image_bytes` as binary tensor data (tritonclient.http.aio);"
        " `tfs-grpc`: TF Serving's Predict, `image_bytes` as DT_STRING (grpc.aio);"
        " `predict`: POST /predict, multipart (httpx). CPU per image is the server's CPU over"
        " the window ÷ images it classified; cores are CPU seconds ÷ wall time (`other` well"
        " above 0: something else ran).",
        "",
        *table(report["load"], load_columns, text=("protocol", "other")),
        "",
        *busy_rows(report["load"]),
        f"## Batches, one request at a time ({args.batch_requests} timed requests per row)",
        "",
        "The rows of one size take turns, request by request (the order reversed every other"
        " turn). Payload: the tensor data (BYTES elements with their 4-byte lengths, or FP32"
        " pixels); for TF Serving the whole message; for `/predict/batch` the multipart body."
        " Cores used meanwhile (server,"
        " load generator, other): "
        + "; ".join(
            f"{size} images: {c['server_cores']}, {c['client_cores']}, {c['other_cores']}"
            for size, c in report["batch_cores"].items()
        )
        + ".",
        "",
        *table(report["batches"], batch_columns, text=("protocol", "kind", "other")),
        "",
        "## Agreement: every answer above against gRPC `image_bytes`, one photo per request",
        "",
        "Each photo sent once per protocol, one per request, plus every answer of the batches"
        " (their two unmeasured requests too); `/predict` answers in JSON, the others float32.",
        "",
        *table(agree, agree_columns, text=("form",)),
    ]
    return markdown("gRPC (Open Inference Protocol, TF Serving) beside REST", report, about, body)
