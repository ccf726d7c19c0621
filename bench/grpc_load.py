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
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from app.api.grpc_tfserving import DT_FLOAT, DT_STRING, PREDICTION_SERVICE, TFSERVING
from bench.harness import (
    CACHE,
    ROOT,
    Server,
    free_port,
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
from bench.protocols import (
    Body,
    Window,
    load_parser,
    mean_size,
    request_bodies,
    send_until,
)
from bench.serve_load import batch_counters, machine_busy_seconds, served_runtime
from catdog.preprocessing import preprocess

MODEL = "catdog"
PROBABILITIES = "probabilities"
FIXTURES = ROOT / "tests" / "fixtures" / "photos"
SPLIT_TEST = ROOT / "data" / "split" / "test"
PROTOCOLS = ("grpc", "tfs-grpc", "rest-oip", "predict")
BUSY = 0.25  # other processes' cores from which a row is said to be disturbed
TIMEOUT = 120.0  # seconds; a request of 32 photos as pixels is 19 MB
# one TCP connection per gRPC client, as each HTTP client has its own: gRPC shares a
# connection between channels to the same address unless told not to
GRPC_CHANNEL = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.use_local_subchannel_pool", 1),
]

Send = Callable[[int], Awaitable[np.ndarray]]  # request number -> probabilities [N, 2]
Opener = Callable[[], AbstractAsyncContextManager[Send]]  # one client, its own connection
Data = tuple[list[bytes], np.ndarray]  # the photo files, and their pixels [N, 224, 224, 3]


class Form:
    """How requests carry photos: protocol, input, the photos of each request (``groups``),
    how to open a client, and the mean payload of a request in bytes."""

    def __init__(
        self, protocol: str, kind: str, groups: list[list[int]], opener: Opener, payload: float
    ) -> None:
        self.protocol, self.kind, self.groups = protocol, kind, groups
        self.opener, self.payload = opener, payload

    @property
    def name(self) -> str:
        """e.g. ``grpc image_bytes``."""
        return f"{self.protocol} {self.kind}"


# ---------------------------------------------------------------- photos and requests


def photo_files(folder: Path, count: int) -> list[Path]:
    """The fixtures, then up to ``count`` photos of ``folder`` (``cat/``, ``dog/`` or
    ``cat.*.jpg``, ``dog.*.jpg``), cats and dogs in turn, none twice by name."""
    files = sorted(FIXTURES.glob("*.jpg"))
    per_class = [
        sorted(folder.glob(f"{label}.*.jpg")) + sorted((folder / label).glob("*.jpg"))
        for label in ("cat", "dog")
    ]
    seen = {f.name for f in files}
    extra = [p for pair in zip(*per_class) for p in pair if p.name not in seen]
    return files + extra[:count]


def groups_of(size: int, count: int, photos: int) -> list[list[int]]:
    """``count`` requests of ``size`` photos, taken in turn from the list."""
    return [[(k * size + j) % photos for j in range(size)] for k in range(count)]


def tensor(module: Any, kind: str, group: list[int], data: Data) -> Any:
    """An ``InferInput`` of tritonclient's ``module`` (grpc or http), its data set once."""
    photos, pixels = data
    if kind == "image_bytes":
        array = np.array([photos[i] for i in group], dtype=object)
        infer_input = module.InferInput(kind, [len(group)], "BYTES")
    else:
        array = pixels[group]
        infer_input = module.InferInput(kind, list(array.shape), "FP32")
    if module is httpclient:  # binary tensor data, not JSON
        infer_input.set_data_from_numpy(array, binary_data=True)
    else:  # gRPC: raw_input_contents
        infer_input.set_data_from_numpy(array)
    return infer_input


def tensor_bytes(kind: str, groups: list[list[int]], data: Data) -> float:
    """Mean tensor data per request (BYTES: a 4-byte length per element), in bytes."""
    if kind == "image_bytes":
        return float(np.mean([sum(4 + len(data[0][i]) for i in g) for g in groups]))
    return float(len(groups[0]) * data[1][0].nbytes)


def tfs_request(kind: str, group: list[int], data: Data) -> bytes:
    """A TF Serving ``PredictRequest`` for the photos of ``group``, serialized."""
    photos, pixels = data
    request = TFSERVING.messages["PredictRequest"]()
    request.model_spec.name = MODEL
    tensor = request.inputs[kind]
    if kind == "image_bytes":
        tensor.dtype = DT_STRING
        tensor.string_val.extend(photos[i] for i in group)
        sizes = [len(group)]
    else:
        tensor.dtype = DT_FLOAT
        tensor.tensor_content = pixels[group].astype("<f4").tobytes()
        sizes = list(pixels[group].shape)
    for size in sizes:
        tensor.tensor_shape.dim.add(size=size)
    return request.SerializeToString()


def multipart(groups: list[list[int]], photos: list[bytes]) -> list[Body]:
    """``/predict`` bodies (one photo: ``bench.protocols``) or ``/predict/batch`` bodies."""
    if all(len(g) == 1 for g in groups):
        return request_bodies("predict", [photos[g[0]] for g in groups], MODEL)
    bodies: list[Body] = []
    for group in groups:
        files = [("files", (f"photo{i}.jpg", photos[i], "image/jpeg")) for i in group]
        request = httpx.Request("POST", "/predict/batch", files=files)
        bodies.append(("/predict/batch", request.read(), dict(request.headers)))
    return bodies


# ---------------------------------------------------------------- clients


def grpc_opener(address: str, requests: list[list[Any]]) -> Opener:
    """gRPC ``ModelInfer`` clients (``tritonclient.grpc.aio``), one channel each."""
    return _triton_opener(
        lambda: grpcaio.InferenceServerClient(address, channel_args=GRPC_CHANNEL),
        [grpcclient.InferRequestedOutput(PROBABILITIES)],
        requests,
        client_timeout=TIMEOUT,
    )


def tfs_opener(address: str, requests: list[bytes]) -> Opener:
    """TF Serving ``Predict`` clients (``grpc.aio``), one channel each."""
    path = TFSERVING.services[PREDICTION_SERVICE]["Predict"].path
    answer_type = TFSERVING.messages["PredictResponse"]

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        channel = grpc.aio.insecure_channel(address, options=GRPC_CHANNEL)
        predict = channel.unary_unary(path, response_deserializer=answer_type.FromString)

        async def send(turn: int) -> np.ndarray:
            answer = await predict(requests[turn % len(requests)], timeout=TIMEOUT)
            output = answer.outputs[PROBABILITIES]
            shape = [d.size for d in output.tensor_shape.dim]
            return np.frombuffer(output.tensor_content, "<f4").reshape(shape)

        try:
            yield send
        finally:
            await channel.close()

    return opened


def oip_opener(url: str, requests: list[list[Any]]) -> Opener:
    """REST OIP clients (``tritonclient.http.aio``), binary tensor data both ways."""
    return _triton_opener(
        lambda: httpaio.InferenceServerClient(url.removeprefix("http://"), conn_timeout=TIMEOUT),
        [httpclient.InferRequestedOutput(PROBABILITIES, binary_data=True)],
        requests,
    )


def _triton_opener(
    connect: Callable[[], Any], outputs: list[Any], requests: list[list[Any]], **infer: Any
) -> Opener:
    """Clients of a tritonclient ``aio`` API, each made by ``connect``: it sends the
    prepared ``requests`` in turn, asking for ``outputs``."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        client = connect()

        async def send(turn: int) -> np.ndarray:
            inputs = requests[turn % len(requests)]
            result = await client.infer(MODEL, inputs, outputs=outputs, **infer)
            return result.as_numpy(PROBABILITIES)

        try:
            yield send
        finally:
            await client.close()

    return opened


def predict_opener(url: str, bodies: list[Body]) -> Opener:
    """``/predict`` or ``/predict/batch`` clients (httpx), one connection each."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Send]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:

            async def send(turn: int) -> np.ndarray:
                path, content, headers = bodies[turn % len(bodies)]
                response = await client.post(path, content=content, headers=headers)
                answer = response.raise_for_status().json()
                answers = answer.get("predictions", [answer])  # /predict/batch or /predict
                # probabilities are keyed by class, in the model's order (as OIP's columns)
                return np.array([list(a["probabilities"].values()) for a in answers])

            yield send

    return opened


def failure(exc: Exception) -> str:
    """What went wrong, as a status: gRPC code, HTTP status or the exception's type."""
    if isinstance(exc, InferenceServerException) and exc.status():
        return str(exc.status()).removeprefix("StatusCode.")
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, httpx.HTTPStatusError):
        return str(exc.response.status_code)
    return type(exc).__name__


def make_form(
    protocol: str, kind: str, groups: list[list[int]], server: Server, address: str, data: Data
) -> Form:
    """The prepared requests of one protocol and input for ``groups`` of photo numbers."""
    if protocol == "predict":
        bodies = multipart(groups, data[0])
        return Form(
            protocol, "files", groups, predict_opener(server.url, bodies), mean_size(bodies)
        )
    if protocol == "tfs-grpc":
        requests = [tfs_request(kind, g, data) for g in groups]
        payload = float(np.mean([len(r) for r in requests]))  # the whole message
        return Form(protocol, kind, groups, tfs_opener(address, requests), payload)
    module = grpcclient if protocol == "grpc" else httpclient
    requests = [[tensor(module, kind, g, data)] for g in groups]
    if protocol == "grpc":
        opener = grpc_opener(address, requests)
    else:
        opener = oip_opener(server.url, requests)
    return Form(protocol, kind, groups, opener, tensor_bytes(kind, groups, data))


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


if __name__ == "__main__":
    main()
