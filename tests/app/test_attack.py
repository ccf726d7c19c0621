"""Issue 32's classes 1-3 against a real process serving REST and gRPC on one event loop.

Class 4 (files claiming far more pixels than their bytes) is ``test_decode_cost.py``.
While each attack runs, a probe sends a normal ``POST /predict`` and a gRPC
``ModelInfer`` in turn, and the process tree's resident memory (the service and its
JSON parser process) is sampled:

1. connections streaming 1-byte chunks, to ``/predict`` and to a path that does not
   exist, are cut off (400 and close) and neither protocol waits on the other;
2. a field echoed in an error comes back cut to ``MOST_ECHO`` characters, and the
   request costs memory in proportion to what it sent;
3. many large bodies at once (JSON numbers, base64, multipart, gRPC messages) hold no
   more than ``CATDOG_BODY_BYTES_BUDGET`` times the memory per body byte that
   ``deploy/sizing.json`` records (``bench upload_memory``), and the memory comes back
   once the service is idle.

The sizes are the smallest that still show each bound. No speed is asserted but the
issue's bound on a normal request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from app.core.errors import MOST_ECHO
from app.protocols.messages import INFERENCE
from app.protocols.numbers import PARSER_BYTES_PER_BYTE
from servicekit import Server, free_port, uvicorn_server
from tests.app.helpers import HTTP_TIMEOUT, good_image, serve, settings_for, upload
from tests.deploy import measured

PROBE_BOUND_S = 1.5  # the bound for a normal request during an attack
BUDGET = 16_000_000  # CATDOG_BODY_BYTES_BUDGET here: two of the bodies below at once
BODY = 6_000_000  # bytes of each large body
IDLE_SLACK = 150e6  # the bound on idle RSS after an attack, above before it
# What the process tree may grow by besides the bodies it holds (gRPC and HTTP buffers,
# decoding, the JSON parser process, heap not yet trimmed): an allowance, not measured.
ALLOWANCE = 100e6
INFER = INFERENCE.services["inference.GRPCInferenceService"]["ModelInfer"]


@pytest.fixture(scope="module")
def server(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("attack") / "server.log"
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Images in flight are not the bound here: the budget is.
    settings = {"body_bytes_budget": BUDGET, "max_images_in_flight": 512}
    with uvicorn_server(tiny_model_base, log, grpc_address=address, **settings) as started:
        started.grpc_port = port  # type: ignore[attr-defined]
        yield started


def tree_rss(pid: int) -> float:
    """Resident bytes of ``pid`` and every process below it."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(p) for p in (task / "children").read_text().split()]
    return total


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[float]]:
    """Samples the tree's RSS every 20 ms while the block runs; ``[peak]`` after it."""
    peak = [tree_rss(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], tree_rss(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def infer_message(files: list[bytes]) -> bytes:
    """A ModelInfer request of encoded images as raw tensor data (as tritonclient sends)."""
    message = INFERENCE.messages["ModelInferRequest"](model_name="catdog")
    message.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(files)])
    message.raw_input_contents.append(b"".join(len(f).to_bytes(4, "little") + f for f in files))
    return message.SerializeToString()


def channel(server: Server) -> grpc.aio.Channel:
    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=unlimited)  # type: ignore[attr-defined]


async def probing(server: Server, attack: Awaitable[object]) -> dict[str, list[float]]:
    """Probe REST and gRPC in turn until ``attack`` finishes; each probe's seconds."""
    seconds: dict[str, list[float]] = {"rest": [], "grpc": []}
    task = asyncio.ensure_future(attack)
    photo = good_image(7)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client,
        channel(server) as grpc_channel,
    ):
        infer = grpc_channel.unary_unary(INFER.path)
        await asyncio.sleep(0.3)
        while not task.done() or not seconds["grpc"]:
            started = time.perf_counter()
            response = await client.post("/predict", files=upload(photo))
            seconds["rest"].append(time.perf_counter() - started)
            assert response.status_code in (200, 503), response.text
            started = time.perf_counter()
            with contextlib.suppress(grpc.aio.AioRpcError):  # UNAVAILABLE: the gate's 503
                await infer(infer_message([photo]), timeout=HTTP_TIMEOUT)
            seconds["grpc"].append(time.perf_counter() - started)
            await asyncio.sleep(0.1)
    await task
    return seconds


async def assert_idle_again(pid: int, before: float) -> float:
    """Once idle (the heap is trimmed every 2 s), the tree's RSS comes back within
    ``IDLE_SLACK`` of ``before``; waits up to 15 s for it. Returns the rise left."""
    deadline = time.monotonic() + 15.0
    while tree_rss(pid) - before > IDLE_SLACK and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    left = tree_rss(pid) - before
    assert left <= IDLE_SLACK, f"idle {before / 1e6:.0f} MB before, +{left / 1e6:.0f} MB after"
    return left


def assert_prompt(seconds: dict[str, list[float]]) -> None:
    for protocol, taken in seconds.items():
        assert taken and max(taken) < PROBE_BOUND_S, (protocol, taken)


# ---------------------------------------------------------------- 1. chunk storms


def storm(port: int, path: str, until: float, answers: list[bytes]) -> None:
    """Stream 1-byte chunks on one connection after another until ``until``; the first
    bytes of each answer (empty: closed without one) go to ``answers``."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    burst = b"1\r\nx\r\n" * 2000
    while time.monotonic() < until:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5.0)
            with contextlib.suppress(OSError):
                sock.sendall(head.encode())
                while time.monotonic() < until:
                    sock.sendall(burst)
            with contextlib.suppress(OSError):
                answers.append(sock.recv(12))


async def test_chunk_storms_starve_neither_protocol(server: Server) -> None:
    before = tree_rss(server.process.pid)
    answers: list[bytes] = []
    until = time.monotonic() + 4.0
    threads = [
        threading.Thread(target=storm, args=(server.port, path, until, answers), daemon=True)
        for path in ("/predict", "/nothing-here") * 4
    ]
    for thread in threads:
        thread.start()
    seconds = await probing(server, asyncio.to_thread(lambda: [t.join() for t in threads]))
    assert_prompt(seconds)
    assert any(a.startswith(b"HTTP/1.1 400") for a in answers), answers[:5]
    await assert_idle_again(server.process.pid, before)
    print(f"probe s: {max(seconds['rest']):.2f} REST, {max(seconds['grpc']):.2f} gRPC")


# ---------------------------------------------------------------- 2. echoed fields


async def test_an_echoed_field_is_cut_and_costs_what_was_sent(server: Server) -> None:
    body = b'{"signature_name": "' + b"s" * 40_000_000 + b'", "instances": [{"b64": "AAAA"}]}'
    before = tree_rss(server.process.pid)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=120.0) as client:
            return await client.post("/v1/models/catdog:predict", content=body)

    attack = asyncio.ensure_future(send())
    with peak_rss(server.process.pid) as peak:
        seconds = await probing(server, attack)
    response = attack.result()
    assert response.status_code == 400
    assert len(response.json()["error"]) <= MOST_ECHO
    assert len(response.content) < 4 * MOST_ECHO
    assert_prompt(seconds)
    per_byte = measured.body_bytes_held_per_byte() + PARSER_BYTES_PER_BYTE  # parsed there
    rise = peak[0] - before
    assert rise <= per_byte * len(body) + ALLOWANCE, f"{rise / 1e6:.0f} MB"
    await assert_idle_again(server.process.pid, before)


async def test_json_past_its_limit_is_refused_before_parsing(tiny_model_base: Path) -> None:
    body = b'{"signature_name": "' + b"s" * 5_000 + b'", "instances": [{"b64": "AAAA"}]}'
    async with serve(settings_for(tiny_model_base, max_json_bytes=4_096)) as served:
        response = await served.client.post("/v1/models/catdog:predict", content=body)
        assert response.status_code == 413, response.text
        assert "more than 4096 (CATDOG_MAX_JSON_BYTES)" in response.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for start in range(0, len(body), 1_000):
                yield body[start : start + 1_000]

        response = await served.client.post("/v1/models/catdog:predict", content=chunks())
        assert response.status_code == 413, response.text
        assert "more than 4096 (CATDOG_MAX_JSON_BYTES)" in response.json()["error"]


# ---------------------------------------------------------------- 3. many bodies at once


def large_bodies(kind: str) -> tuple[str, dict[str, str], bytes]:
    """(path or gRPC method, headers, body) of about ``BODY`` bytes of one kind."""
    photo = good_image(3)
    file = photo + bytes(BODY // 4 - len(photo))
    if kind == "json numbers":  # 32x32x3 pixels written with many digits
        digits = "0." + "1" * 60
        row = "[" + ",".join([digits] * 3) + "]"
        image = "[" + ",".join(["[" + ",".join([row] * 32) + "]"] * 32) + "]"
        count = BODY // len(image)
        text = '{"instances": [' + ",".join([image] * count) + "]}"
        return "/v1/models/catdog:predict", {"content-type": "application/json"}, text.encode()
    if kind == "base64":
        instances = [{"b64": base64.b64encode(file).decode()}] * 3
        body = json.dumps({"instances": instances}).encode()
        return "/v1/models/catdog:predict", {"content-type": "application/json"}, body
    if kind == "multipart":
        request = httpx.Request("POST", "http://x/predict/batch", files=[("files", file)] * 4)
        return "/predict/batch", dict(request.headers), request.read()
    return INFER.path, {}, infer_message([file] * 4)


async def send_all(server: Server, rounds: int) -> dict[str, int]:
    """Four requests of each kind at once, ``rounds`` times; answers counted."""
    counts: dict[str, int] = {}
    kinds = [large_bodies(kind) for kind in ("json numbers", "base64", "multipart", "grpc")]
    limits = httpx.Limits(max_connections=16)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120.0, limits=limits) as client,
        channel(server) as grpc_channel,
    ):

        async def one(path: str, headers: dict[str, str], body: bytes) -> None:
            for _ in range(rounds):
                if path == INFER.path:
                    try:
                        await grpc_channel.unary_unary(path)(body, timeout=120.0)
                        answer = "200"
                    except grpc.aio.AioRpcError as error:
                        answer = "503" if error.code() == grpc.StatusCode.UNAVAILABLE else "?"
                else:
                    response = await client.post(path, headers=headers, content=body)
                    answer = str(response.status_code)
                counts[answer] = counts.get(answer, 0) + 1

        await asyncio.gather(*(one(*kind) for kind in kinds for _ in range(4)))
    return counts


async def test_many_large_bodies_hold_no_more_than_the_budget(server: Server) -> None:
    pid = server.process.pid
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        assert (await client.post("/predict", files=upload(good_image()))).status_code == 200
    await asyncio.sleep(3.0)  # the idle trim after the earlier tests
    before = tree_rss(pid)
    attack = asyncio.ensure_future(send_all(server, rounds=2))
    with peak_rss(pid) as peak:
        seconds = await probing(server, attack)
    counts = attack.result()
    assert set(counts) <= {"200", "503"} and counts.get("200") and counts.get("503"), counts
    assert_prompt(seconds)
    bound = measured.body_bytes_held_per_byte() * BUDGET + ALLOWANCE
    rise = peak[0] - before
    assert rise <= bound, f"{rise / 1e6:.0f} MB > {bound / 1e6:.0f} MB"
    left = await assert_idle_again(pid, before)
    print(
        f"answers {counts}; rise {rise / 1e6:.0f} MB of {bound / 1e6:.0f}; idle +"
        f"{left / 1e6:.0f} MB"
    )
