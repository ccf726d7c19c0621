"""Large JSON number tensors are parsed in a worker process (``app.core.offload``).

Against a real uvicorn process whose offload threshold is below one 32x32 image, every
pixel form of TF Serving's ``:predict`` and the Open Inference Protocol answers what
``/predict`` answers, the bad ones get the 400 they get when parsed in place, and
``/metrics`` counts them. In-process: the event loop serves while a parse runs, and a
worker that dies costs its request a 503, not the service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import HTTPException

from app.core.errors import MOST_ECHO
from app.core.offload import Offload
from app.protocols.numbers import OFFLOAD_BYTES, parse_json
from app.protocols.tfserving.routes import PredictRequest
from servicekit import Server, start_uvicorn, stop, value, wait_ready
from tests.app.helpers import serve, settings_for
from tests.app.protocols import TOLERANCE, images, pixels, predicted, protocol_server

ONE_IMAGE = 32 * 32 * 3  # values of one image of the tiny model
PREDICT = "/v1/models/catdog:predict"
INFER = "/v2/models/catdog/infer"


@pytest.fixture(scope="module")
def server(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("offload")
    with protocol_server(
        tiny_model_base, folder / "server.log", json_offload_values=ONE_IMAGE - 1
    ) as started:
        yield started


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def offloaded(http: httpx.Client) -> float:
    return value(http.get("/metrics").text, "catdog_json_offloaded_total")


def test_every_pixel_form_parsed_in_the_worker_answers_as_predict(
    http: httpx.Client, server: Server
) -> None:
    files = images(3)
    expected = predicted(server.url, files)
    tensor = pixels(files).tolist()
    before = offloaded(http)
    answers = {
        "rows": http.post(PREDICT, json={"instances": tensor}),
        "rows naming the input": http.post(
            PREDICT, json={"instances": [{"images": row} for row in tensor]}
        ),
        "columns": http.post(PREDICT, json={"inputs": tensor}),
        "columns naming the input": http.post(PREDICT, json={"inputs": {"images": tensor}}),
    }
    for form, response in answers.items():
        assert response.status_code == 200, (form, response.text)
        table = response.json().get("predictions") or response.json()["outputs"]
        np.testing.assert_allclose(table, expected, atol=TOLERANCE, err_msg=form)
    oip = {"name": "images", "shape": [3, 32, 32, 3], "datatype": "FP32", "data": tensor}
    response = http.post(INFER, json={"inputs": [oip]})
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], (3, 2)), expected, atol=TOLERANCE)
    assert offloaded(http) == before + 5


def test_a_small_body_is_parsed_in_place(http: httpx.Client) -> None:
    before = offloaded(http)
    response = http.post(PREDICT, json={"instances": [[[[0.5] * 3] * 32] * 16]})
    assert response.status_code == 400, response.text  # half an image: the shape is wrong
    assert offloaded(http) == before


def test_a_body_of_offload_bytes_is_parsed_in_the_worker_whatever_it_holds(
    http: httpx.Client, server: Server
) -> None:
    """Base64 images are few JSON values, but parsing 4 MB of them would hold the event
    loop for ~25 ms: the size alone sends a body to the worker, with the same answer."""
    files = images(2)
    expected = predicted(server.url, files)
    padding = " " * OFFLOAD_BYTES  # JSON whitespace: the same request, 4 MB larger
    texts = [base64.b64encode(f).decode() for f in files]
    body = '{"instances": [' + ", ".join(f'{{"b64": "{t}"}}' for t in texts) + "]" + padding
    before = offloaded(http)
    response = http.post(PREDICT, content=(body + "}").encode())
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], expected, atol=TOLERANCE)
    wrong = body.replace('"instances"', '"signature_name": "' + "s" * 2000 + '", "instances"')
    response = http.post(PREDICT, content=(wrong + "}").encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("no signature 'sss")
    assert len(response.json()["error"]) <= MOST_ECHO
    assert offloaded(http) == before + 2


@pytest.mark.parametrize(
    ("body", "route", "says"),
    [
        ({"instances": [[[[0.5] * 3] * 32] * 32, [[[0.5] * 3] * 32] * 31]}, PREDICT, "rectangular"),
        ({"inputs": [[[[0.5] * 3] * 32] * 31 + [[[0.5, "x", 0.5]] * 32]]}, PREDICT, "rectangular"),
        ({"inputs": [[[[0.5] * 3] * 32] * 31 + [[[0.5, True, 0.5]] * 32]]}, PREDICT, "bool"),
        (
            {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                         "data": [0.5] * ONE_IMAGE}]},
            INFER,
            "base64 strings",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32",
                         "data": [[0.5] * 3] * 1023 + [[0.5, 0.5]]}]},
            INFER,
            "rectangular",
        ),
    ],
    ids=["ragged rows", "a string", "booleans", "numbers as images", "ragged OIP data"],
)  # fmt: skip
def test_a_bad_tensor_parsed_in_the_worker_is_a_400(
    http: httpx.Client, body: dict[str, object], route: str, says: str
) -> None:
    response = http.post(route, json=body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]
    assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize("route", [PREDICT, INFER])
def test_nested_empty_arrays_are_a_413_before_parsing(http: httpx.Client, route: str) -> None:
    """Arrays nested 100 deep: 60,000 of them for 600 commas, more than any legal tensor
    of 32 tiny images holds (33,825); each would be a Python object."""
    before = offloaded(http)
    nested = ",".join(["[" * 100 + "]" * 100] * 600)
    body = (
        f'{{"instances": [{nested}]}}'
        if route == PREDICT
        else f'{{"inputs": [{{"name": "images", "shape": [1], "datatype": "FP32", '
        f'"data": [{nested}]}}]}}'
    )
    response = http.post(route, content=body.encode())
    assert response.status_code == 413, response.text
    assert "arrays and objects" in response.json()["error"]
    assert offloaded(http) == before


def test_the_413_for_too_many_values_comes_before_the_worker(http: httpx.Client) -> None:
    before = offloaded(http)
    values = ",".join(["0.5"] * (32 * ONE_IMAGE + 4096 + 1))  # one comma past the bound
    response = http.post(PREDICT, content=f'{{"instances": [[{values}]]}}'.encode())
    assert response.status_code == 413, response.text
    assert offloaded(http) == before


#: Bodies of 20,000 values that are not numbers of a pixel tensor: each would come back
#: from the worker as a Python object; no legal request holds more than 4,096 + 4 per image.
LEFTOVERS = [
    pytest.param({"inputs": [None] * 20_000}, PREDICT, id="nulls"),
    pytest.param({"instances": [[]] * 20_000}, PREDICT, id="empty lists"),
    pytest.param({"inputs": {"images": ["x"] * 20_000}}, PREDICT, id="strings"),
    pytest.param({"instances": [{"b64": ""}] * 20_000}, PREDICT, id="empty images"),
    pytest.param(
        {"inputs": [{"name": "image_bytes", "shape": [20_000], "datatype": "BYTES",
                     "data": [""] * 20_000}]},
        INFER,
        id="OIP strings",
    ),
    pytest.param(
        {"inputs": [{"name": "images", "shape": [1] * 20_000, "datatype": "FP32", "data": []}]},
        INFER,
        id="OIP shape",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "route"), LEFTOVERS)
def test_many_values_besides_number_tensors_are_a_413_from_the_worker(
    http: httpx.Client, body: dict[str, object], route: str
) -> None:
    before = offloaded(http)
    response = http.post(route, json=body)
    assert response.status_code == 413, response.text
    assert "besides its tensors of numbers" in response.json()["error"]
    assert offloaded(http) == before + 1
    assert http.get("/healthz").status_code == 200


# ---------------------------------------------------------------- in-process


def slow_pack(request: PredictRequest) -> None:
    """A pack that takes its time, in the worker process."""
    time.sleep(3)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            if f"\nPPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


async def test_a_call_whose_caller_left_keeps_its_slot_until_it_ends() -> None:
    offload = Offload(1)
    try:
        call = asyncio.create_task(offload.run(time.sleep, 1.5))
        await asyncio.sleep(0.5)
        call.cancel()
        await asyncio.sleep(0.1)
        assert call.cancelled()
        assert offload._slots.locked()  # noqa: SLF001  # the process still runs it
        for _ in range(100):
            if not offload._slots.locked():  # noqa: SLF001
                break
            await asyncio.sleep(0.1)
        assert not offload._slots.locked()  # noqa: SLF001
        assert await offload.run(abs, -2) == 2
    finally:
        offload.close()


async def test_an_idle_pool_is_closed_and_started_again_on_the_next_call() -> None:
    offload = Offload(1, idle_close_s=0.5)
    try:
        assert await offload.run(abs, -1) == 1
        [worker] = offload.processes()
        await asyncio.sleep(0.3)
        assert offload.processes() == [worker]
        for _ in range(50):
            if not alive(worker):
                break
            await asyncio.sleep(0.1)
        assert not alive(worker)
        assert offload.processes() == []
        assert await offload.run(abs, -2) == 2
        assert offload.processes() not in ([], [worker])
    finally:
        offload.close()


async def test_a_large_argument_is_not_kept_once_the_calls_end() -> None:
    offload = Offload(1)
    tracemalloc.start()
    try:
        assert await offload.run(len, bytes(50_000_000)) == 50_000_000
        await asyncio.sleep(0.5)  # the empty call that follows is sent
        held, _ = tracemalloc.get_traced_memory()
        assert held < 10_000_000, f"{held / 1e6:.0f} MB still held"
    finally:
        tracemalloc.stop()
        offload.close()


async def test_a_pool_found_broken_as_a_call_is_handed_over_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by a probe: a worker killed a moment before a call, its pool not yet seen as
    broken by ``_pool_now`` but broken by the time of ``submit``, made that call a 500."""
    offload = Offload(1)
    try:
        assert await offload.run(abs, -1) == 1
        [worker] = offload.processes()
        broken = offload._pool  # noqa: SLF001
        os.kill(worker, signal.SIGKILL)
        for _ in range(100):  # until its manager thread has noticed
            try:
                broken.submit(abs, 1)
            except BrokenProcessPool:
                break
            await asyncio.sleep(0.05)
        real = Offload._pool_now  # noqa: SLF001
        handed = []

        def racing(self: Offload) -> object:
            """The first time, the pool as ``_pool_now`` saw it a moment before."""
            if not handed:
                handed.append(broken)
                return broken
            return real(self)

        monkeypatch.setattr(Offload, "_pool_now", racing)
        assert await offload.run(abs, -2) == 2
        assert offload.processes() not in ([], [worker])
    finally:
        offload.close()


async def test_the_event_loop_serves_while_a_worker_parses(tiny_model_base: Path) -> None:
    settings = settings_for(tiny_model_base, runtime="litert", json_offload_values=1)
    async with serve(settings) as (app, client):
        service = app.state.service
        body = b'{"instances": [[0.5, 0.5]]}'
        parsing = asyncio.create_task(parse_json(service, PredictRequest, body, 10**6, slow_pack))
        await asyncio.sleep(0.1)
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert not parsing.done()
        request = await parsing
        assert request.instances is not None
        assert len(service.offload.processes()) == 1


async def test_a_worker_killed_mid_call_costs_its_request_a_503_not_the_service(
    tiny_model_base: Path,
) -> None:
    settings = settings_for(tiny_model_base, runtime="litert", json_offload_values=1)
    tensor = pixels(images(1)).tolist()
    async with serve(settings) as (app, client):
        service = app.state.service
        body = b'{"instances": [[0.5, 0.5]]}'
        parsing = asyncio.create_task(parse_json(service, PredictRequest, body, 10**6, slow_pack))
        for _ in range(100):
            if service.offload.processes():
                break
            await asyncio.sleep(0.05)
        [worker] = service.offload.processes()
        await asyncio.sleep(0.5)  # the call is in the worker, sleeping in slow_pack
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(HTTPException) as failed:
            await parsing
        assert failed.value.status_code == 503
        assert "worker process died" in str(failed.value.detail)
        assert failed.value.headers == {"Retry-After": "1"}
        response = await client.post(PREDICT, json={"instances": tensor})
        assert response.status_code == 200, response.text
        assert service.offload.processes() not in ([], [worker])


async def test_a_worker_killed_while_idle_is_replaced_before_the_next_call(
    tiny_model_base: Path,
) -> None:
    settings = settings_for(tiny_model_base, runtime="litert", json_offload_values=1)
    tensor = pixels(images(1)).tolist()
    async with serve(settings) as (app, client):
        response = await client.post(PREDICT, json={"instances": tensor})
        assert response.status_code == 200, response.text
        [worker] = app.state.service.offload.processes()
        os.kill(worker, signal.SIGKILL)
        await asyncio.sleep(0.2)  # dead before the next request arrives
        response = await client.post(PREDICT, json={"instances": tensor})
        assert response.status_code == 200, response.text
        assert app.state.service.offload.processes() not in ([], [worker])
        metrics = await client.get("/metrics")
        assert value(metrics.text, "catdog_json_offloaded_total") == 2


def test_sigterm_leaves_no_worker_behind(tiny_model_base: Path, tmp_path: Path) -> None:
    """uvicorn ends on SIGTERM without running atexit: workers only told to stop stayed,
    re-parented to init, with multiprocessing's resource tracker."""
    server = start_uvicorn(tiny_model_base, tmp_path / "server.log", json_offload_values=1)
    try:
        wait_ready(server)
        body = {"instances": pixels(images(1)).tolist()}
        response = httpx.post(f"{server.url}{PREDICT}", json=body, timeout=60)
        assert response.status_code == 200, response.text
        children = children_of(server.process.pid)
        assert children, "the parsing process did not start"
    finally:
        assert stop(server) == -signal.SIGTERM
    for _ in range(50):
        if not any(alive(pid) for pid in children):
            break
        time.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == []


@pytest.mark.parametrize(("body", "route"), LEFTOVERS)
async def test_many_values_besides_number_tensors_are_a_413_in_place_too(
    tiny_model_base: Path, body: dict[str, object], route: str
) -> None:
    settings = settings_for(tiny_model_base, runtime="litert")
    async with serve(settings) as (app, client):
        response = await client.post(route, json=body)
        assert response.status_code == 413, response.text
        assert "besides its tensors of numbers" in response.json()["error"]
        assert app.state.service.offload.processes() == []


async def test_no_workers_parses_in_place(tiny_model_base: Path) -> None:
    settings = settings_for(tiny_model_base, runtime="litert", json_parse_processes=0)
    tensor = pixels(images(1)).tolist()
    async with serve(settings) as (app, client):
        response = await client.post(PREDICT, json={"instances": tensor * 32})
        assert response.status_code == 200, response.text
        assert app.state.service.offload.processes() == []


async def test_json_images_cap_pixels_sent_as_numbers_not_images(tiny_model_base: Path) -> None:
    """One image of 32x32 pixels is 3,072 values; a body may hold 4,096 more (keys and
    such), so three images are past a cap of one."""
    settings = settings_for(tiny_model_base, runtime="litert", max_json_images=1)
    files = images(3)
    async with serve(settings) as (_, client):
        response = await client.post(PREDICT, json={"instances": pixels(files).tolist()})
        assert response.status_code == 413, response.text
        assert "binary tensor data" in response.json()["error"]
        response = await client.post(PREDICT, json={"instances": pixels(files[:1]).tolist()})
        assert response.status_code == 200, response.text
        rows = [{"b64": base64.b64encode(data).decode()} for data in files]
        response = await client.post(PREDICT, json={"instances": rows})
        assert response.status_code == 200, response.text


def test_json_images_cannot_exceed_the_files_of_a_request(tiny_model_base: Path) -> None:
    with pytest.raises(ValueError, match="max_json_images"):
        settings_for(tiny_model_base, max_files_per_request=4, max_json_images=5)
