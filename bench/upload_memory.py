"""Memory a pod holds for uploads: a LiteRT server's RSS while its admission cap is full
of files at the upload limit. The pods' memory limits are sized from it
(docs/deployment.md; ``tests/deploy/test_pods.py`` reads the results file).

The service holds an upload in memory while its request runs: ``app/protocols/predict/multipart.py``
keeps each multipart part, the protocol routes read the whole body, and each route
makes copies of its own (the bytes handed to decoding, base64 text and its decoded
bytes). Admission counts images once their body is in, so a pod can hold up to
``CATDOG_MAX_IMAGES_IN_FLIGHT`` files of ``CATDOG_MAX_UPLOAD_BYTES``, times what its
route copies. This measures that factor per route and per files in a request:

* ``multipart``: ``POST /predict`` (one ``file`` part) or ``/predict/batch``
  (``files`` parts);
* ``oip-binary``: ``POST /v2/models/<name>/infer``, BYTES input as binary tensor data;
* ``oip-json``: the same with the files in base64 inside the JSON;
* ``tfs-json``: ``POST /v1/models/<name>:predict`` with ``{"b64": ...}`` instances;
* ``grpc``: ``ModelInfer`` of the Open Inference Protocol over gRPC, the files as raw
  tensor data (as ``tritonclient.grpc`` sends them), one channel per request;
* ``tfs-grpc``: TF Serving's ``Predict`` over gRPC, the files as a DT_STRING tensor's
  ``string_val`` (as ``tf.make_tensor_proto`` makes it), one channel per request;
* ``tfs-numbers``: ``POST /v1/models/<name>:predict`` with pixels as JSON numbers (8
  characters each), one image of the model's input size per file.

Each row gets a fresh ``python -m app`` (LiteRT, the shipped model, every other
setting at its default but ``CATDOG_BODY_BYTES_BUDGET=0``, so that every body sent is
held). Clients send together as many requests as it takes to fill
the images a server admits; each file is a test photo padded with zero bytes to
exactly the upload limit, so the upload is as large as allowed while decoding stays
that of a small photo (JPEG decoders stop at the end-of-image marker): the rise is
the uploads'. Every request must answer 200, else the run fails. Reported: the
server's resident memory right after ``/readyz`` (``VmRSS``), its high-water mark
(``VmHWM``) after the rounds, the rise per byte of the files and per byte of the bodies
(what ``CATDOG_BODY_BYTES_BUDGET`` counts) held at once, and the JSON parser process's
high-water mark (sized on its own: ``bench json_offload``).

    .venv/bin/python -m bench.upload_memory --out bench/results/upload-memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx

from bench import sizing
from bench.harness import ROOT, memory_mb

PROTOCOLS = ("multipart", "oip-binary", "oip-json", "tfs-json", "grpc", "tfs-grpc", "tfs-numbers")
RESULTS = Path(__file__).with_name("results") / "upload-memory.json"
Request = tuple[str, dict[str, str], bytes]  # path, headers, body


def defaults():
    """The app's default settings (what the measured server runs with)."""
    from app.core.config import Settings

    return Settings()


def image_size(base: Path) -> tuple[int, int]:
    """The input size of the newest version in a model folder."""
    newest = max((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return tuple(json.loads((newest / "metadata.json").read_text())["image_size"])


def children_peak_mb(pid: int) -> float:
    """The summed ``VmHWM`` of the child processes of ``pid`` (the JSON parser), MB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(memory_mb(int(child))["VmHWM"] for child in children)


def padded_photo(size: int) -> bytes:
    """A test photo followed by zero bytes, ``size`` bytes in all."""
    photos = sorted((ROOT / "data" / "split" / "test").rglob("*.jpg"))
    if not photos:
        raise SystemExit("no photo under data/split/test")
    photo = photos[0].read_bytes()
    return photo + bytes(size - len(photo))


def request_for(
    protocol: str, name: str, file: bytes, count: int, size: tuple[int, int] | None = None
) -> Request:
    """One request carrying ``count`` copies of ``file`` the way ``protocol`` sends them
    (for ``grpc``: the method's path, no headers, the serialized message; for
    ``tfs-numbers``: ``count`` images of ``size`` pixels instead of the file)."""
    if protocol == "multipart":
        boundary = "catdog-upload-memory"
        path, field = ("/predict", "file") if count == 1 else ("/predict/batch", "files")
        part = (
            f"--{boundary}\r\nContent-Disposition: form-data; name={field}; "
            'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        body = b"".join(part + file + b"\r\n" for _ in range(count))
        body += f"--{boundary}--\r\n".encode()
        return path, {"content-type": f"multipart/form-data; boundary={boundary}"}, body
    if protocol == "tfs-numbers":
        side = size or (224, 224)
        row = "[" + ",".join(["0.501961"] * 3) + "]"
        image = "[" + ",".join(["[" + ",".join([row] * side[1]) + "]"] * side[0]) + "]"
        body = ('{"instances": [' + ",".join([image] * count) + "]}").encode()
        return f"/v1/models/{name}:predict", {"content-type": "application/json"}, body
    if protocol == "tfs-grpc":
        from app.protocols.messages import TFSERVING
        from app.protocols.tfserving.servicer import DT_STRING, PREDICTION_SERVICE

        request = TFSERVING.messages["PredictRequest"]()
        request.model_spec.name = name
        tensor = request.inputs["image_bytes"]
        tensor.dtype = DT_STRING
        tensor.tensor_shape.dim.add(size=count)
        tensor.string_val.extend([file] * count)
        method = TFSERVING.services[PREDICTION_SERVICE]["Predict"]
        return method.path, {}, request.SerializeToString()
    elements = (struct.pack("<I", len(file)) + file) * count
    if protocol == "grpc":
        from app.protocols.messages import INFERENCE

        message = INFERENCE.messages["ModelInferRequest"](model_name=name)
        message.inputs.add(name="image_bytes", datatype="BYTES", shape=[count])
        message.raw_input_contents.append(elements)
        method = INFERENCE.services["inference.GRPCInferenceService"]["ModelInfer"]
        return method.path, {}, message.SerializeToString()
    text = base64.b64encode(file).decode()
    if protocol == "tfs-json":
        body = json.dumps({"instances": [{"b64": text}] * count}).encode()
        return f"/v1/models/{name}:predict", {"content-type": "application/json"}, body
    infer = f"/v2/models/{name}/infer"
    tensor: dict = {"name": "image_bytes", "shape": [count], "datatype": "BYTES"}
    if protocol == "oip-json":
        tensor["data"] = [text] * count
        body = json.dumps({"inputs": [tensor]}).encode()
        return infer, {"content-type": "application/json"}, body
    tensor["parameters"] = {"binary_data_size": len(elements)}
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return infer, headers, header + elements


def commit() -> str:
    """The commit measured (``+`` when the app or catdog has uncommitted changes)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    return head + ("+" if git("status", "--porcelain", "--", "app", "catdog").strip() else "")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, model_dir: Path, grpc_port: int) -> subprocess.Popen:
    """``python -m app`` on LiteRT, gRPC on ``grpc_port``, ready (``/readyz`` 200) when
    this returns."""
    env = {
        **os.environ,
        "CATDOG_RUNTIME": "litert",
        "CATDOG_MODEL_DIR": str(model_dir),
        "CATDOG_POLL_INTERVAL_S": "0",
        "CATDOG_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "CATDOG_BODY_BYTES_BUDGET": "0",
    }
    command = [sys.executable, "-m", "app", "--port", str(port), "--no-access-log"]
    server = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server was not ready within 60 s")


async def fill_grpc(
    port: int, request: Request, at_once: int, rounds: int
) -> list[dict[int | str, int]]:
    """As ``fill``, over gRPC, one channel per request; OK counted as 200."""
    path, _, body = request
    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=unlimited) for _ in range(at_once)
    ]

    async def one(channel: grpc.aio.Channel) -> int | str:
        stub = channel.unary_unary(path)  # bytes in, bytes out
        try:
            await stub(body, timeout=300)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return 200

    counts = []
    try:
        for _ in range(rounds):
            codes = await asyncio.gather(*(one(c) for c in channels))
            counts.append({c: codes.count(c) for c in set(codes)})
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return counts


async def fill(
    port: int, request: Request, at_once: int, rounds: int
) -> list[dict[int | str, int]]:
    """``rounds`` times, ``at_once`` requests sent together; statuses counted per round."""
    path, headers, body = request
    limits = httpx.Limits(max_connections=at_once + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        url = f"http://127.0.0.1:{port}{path}"
        counts = []
        for _ in range(rounds):
            answers = await asyncio.gather(
                *(client.post(url, headers=headers, content=body) for _ in range(at_once))
            )
            statuses = [a.status_code for a in answers]
            counts.append({s: statuses.count(s) for s in sorted(set(statuses))})
        return counts


def measure(protocol: str, per_request: int, args: argparse.Namespace) -> dict:
    """One fresh server, filled ``args.rounds`` times through ``protocol``."""
    at_once = args.images // per_request
    port, grpc_port = free_port(), free_port()
    server = start_server(port, args.model_dir, grpc_port)
    try:
        idle = memory_mb(server.pid)["VmRSS"]
        file = padded_photo(args.bytes)
        size = image_size(args.model_dir)
        request = request_for(protocol, defaults().model_name, file, per_request, size)
        if protocol in ("grpc", "tfs-grpc"):
            counts = asyncio.run(fill_grpc(grpc_port, request, at_once, args.rounds))
        else:
            counts = asyncio.run(fill(port, request, at_once, args.rounds))
        peak = memory_mb(server.pid)["VmHWM"]
        parser = children_peak_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    if any(set(c) != {200} for c in counts):
        raise SystemExit(f"{protocol} x {per_request}: not every request answered 200: {counts}")
    held = at_once * per_request * args.bytes / 1e6
    return {
        "protocol": protocol,
        "route": request[0],
        "requests": at_once,
        "files_per_request": per_request,
        "file_mb": round(args.bytes / 1e6, 2),
        "body_mb": round(len(request[2]) / 1e6, 2),
        "idle_rss_mb": round(idle, 1),
        "peak_rss_mb": round(peak, 1),
        "rise_mb": round(peak - idle, 1),
        "parser_peak_mb": round(parser, 1),
        "rise_per_byte": round((peak - idle) / held, 2),
        "rise_per_body_byte": round((peak - idle) / (at_once * len(request[2]) / 1e6), 2),
    }


def table(rows: list[dict]) -> str:
    """The results as a markdown table."""
    lines = [
        "| protocol | route | requests at once | files each | file MB | body MB "
        "| idle RSS MB | peak RSS MB | rise MB | rise per byte of the files | per body byte "
        "| parser peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['protocol']} | `{r['route']}` | {r['requests']} | {r['files_per_request']} "
            f"| {r['file_mb']} | {r['body_mb']} | {r['idle_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['rise_mb']:.0f} | {r['rise_per_byte']:.2f} | {r['rise_per_body_byte']:.2f} "
            f"| {r['parser_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure every protocol x files-per-request asked for; print (and save) the table."""
    settings = defaults()
    p = argparse.ArgumentParser(prog="python -m bench.upload_memory", description=__doc__)
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    p.add_argument(
        "--per-request",
        default=f"1,{settings.max_files_per_request}",
        help="files in one request, comma-separated (default: 1 and the most allowed)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=settings.max_images_in_flight,
        help="files held at once (default: the images a server admits)",
    )
    p.add_argument("--bytes", type=int, default=settings.max_upload_bytes, help="per file")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "catdog")
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    protocols = args.protocols.split(",")
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        p.error(f"unknown protocols {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    counts = [int(n) for n in args.per_request.split(",")]
    rows = [measure(x, n, args) for x in protocols for n in counts]
    model = args.model_dir.resolve()
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    where = f"{os.cpu_count()} CPUs; LiteRT, {shown}; {args.rounds} rounds per row"
    print(where)
    print(table(rows))
    if args.out:
        command = "python -m bench.upload_memory " + shlex.join(argv or sys.argv[1:])
        results = {
            "command": command.strip(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": commit(),
            "environment": where,
            "settings": {
                "max_images_in_flight": settings.max_images_in_flight,
                "max_upload_bytes": args.bytes,
            },
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        sizing.update("uploads", sizing.upload_part(results))


if __name__ == "__main__":
    main()
