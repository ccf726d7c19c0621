"""The Open Inference Protocol over gRPC (``app/api/grpc_server.py``).

Against a real uvicorn process serving gRPC beside REST, driven by tritonclient.grpc:
health, metadata, readiness, versions (that each input form answers what ``/predict``
answers: test_answers.py). In-process (the gRPC server runs on the test's event loop, so the
admission can be filled and a call held), with this service's own messages: contents
against raw bytes, malformed messages, overload, the client's share, a cancelled call,
metrics, and a port already taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton
from asgi_lifespan import LifespanManager
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from app.core.gate import Upload, peer_key
from app.main import shutdown_started
from app.protocols.messages import INFERENCE, TFSERVING, Call
from servicekit import Server, free_port, start_uvicorn, stop, wait_ready
from tests import images as test_images
from tests.app.helpers import (
    BOUNDARY,
    Served,
    make_app,
    metrics_text,
    multipart_head,
    serve,
    settings_for,
)
from tests.app.protocols import (
    CLASSES,
    TOLERANCE,
    images,
    pixels,
    predicted,
)

M = INFERENCE.messages
CALLS = INFERENCE.services["inference.GRPCInferenceService"]

# ---------------------------------------------------------------- a real process


@pytest.fixture(scope="module")
def server(protocols_server: Server) -> Server:
    """The service the protocol modules share (tests/app/conftest.py)."""
    return protocols_server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as c:  # type: ignore[attr-defined]
        yield c


def bytes_input(files: list[bytes]) -> triton.InferInput:
    """Encoded images; tritonclient.grpc sends them as raw_input_contents."""
    tensor = triton.InferInput("image_bytes", [len(files)], "BYTES")
    return tensor.set_data_from_numpy(np.array(files, dtype=np.object_))


def fp32_input(array: np.ndarray) -> triton.InferInput:
    return triton.InferInput("images", list(array.shape), "FP32").set_data_from_numpy(array)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "catdog" and list(metadata.extensions) == ["classification"]
    model = client.get_model_metadata("catdog")
    assert list(model.versions) == ["2", "1"]
    assert model.platform == "tensorflow"
    inputs = {i.name: (i.datatype, list(i.shape)) for i in model.inputs}
    assert inputs == {"image_bytes": ("BYTES", [-1]), "images": ("FP32", [-1, 32, 32, 3])}
    assert [(o.name, o.datatype, list(o.shape)) for o in model.outputs] == [
        ("probabilities", "FP32", [-1, 2])
    ]
    assert client.is_model_ready("catdog") and client.is_model_ready("catdog", "1")
    assert not client.is_model_ready("catdog", "3")
    with pytest.raises(InferenceServerException) as error:
        client.is_model_ready("dog")
    assert error.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("catdog", "7")
    assert error.value.status() == "StatusCode.NOT_FOUND"
    assert "no version '7'" in error.value.message()


def test_explicit_version(client: triton.InferenceServerClient) -> None:
    files = images(2)
    answers = {}
    for version in ("1", "2"):
        result = client.infer("catdog", [bytes_input(files)], model_version=version)
        assert result.get_response().model_version == version
        answers[version] = result.as_numpy("probabilities")
    assert np.abs(answers["1"] - answers["2"]).max() > 1e-3  # two different models answered
    with pytest.raises(InferenceServerException) as error:
        client.infer("catdog", [bytes_input(files)], model_version="3")
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_classification_extension(client: triton.InferenceServerClient, server: Server) -> None:
    files = images(2)
    requested = triton.InferRequestedOutput("probabilities", class_count=2)
    rows = client.infer("catdog", [bytes_input(files)], outputs=[requested]).as_numpy(
        "probabilities"
    )
    assert rows.shape == (2, 2)
    for row, expected in zip(rows, predicted(server.url, files)):
        parsed = [s.decode().split(":") for s in row]
        scores = [float(score) for score, _, _ in parsed]
        assert scores == sorted(scores, reverse=True)
        for score, index, label in parsed:
            assert CLASSES[int(index)] == label
            assert abs(float(score) - expected[int(index)]) <= TOLERANCE


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        (lambda: bytes_input([test_images.text_bytes()]), "not a recognised"),
        (lambda: fp32_input(np.full((1, 32, 32, 3), 2.0, np.float32)), "[0, 1]"),
        (lambda: fp32_input(np.zeros((1, 16, 16, 3), np.float32)), "32, 32, 3"),
        (lambda: fp32_input(np.zeros((40, 32, 32, 3), np.float32)), "at most 32"),
        (lambda: triton.InferInput("logits", [1], "FP32"), "unknown input"),
    ],
    ids=["not-an-image", "out-of-range", "wrong-shape", "too-many", "unknown-input"],
)
def test_bad_input_is_invalid_argument(
    client: triton.InferenceServerClient, tensor: object, words: str
) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.infer("catdog", [tensor()])  # type: ignore[operator]
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT", error.value
    assert words in error.value.message()
    assert client.infer("catdog", [bytes_input(images(1))]).as_numpy("probabilities").shape == (
        1,
        2,
    )


async def test_grpc_health_check(server: Server) -> None:
    async with channel_to(server.grpc_port) as channel:  # type: ignore[attr-defined]
        for name in ("", "inference.GRPCInferenceService"):
            answer = await health(channel, name)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health(channel, "nope")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        # Watch streams through the gate's interceptor (its handler writes with context.write)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await asyncio.wait_for(watch.read(), 30)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


# ---------------------------------------------------------------- in-process


@pytest_asyncio.fixture
async def served(tiny_model_base: Path) -> AsyncIterator[Served]:
    """A fresh app with gRPC on a free port (``app.state.grpc.port``)."""
    settings = settings_for(
        tiny_model_base,
        grpc_address="127.0.0.1:0",
        max_images_in_flight=4,
        max_files_per_request=2,
        max_upload_bytes=50_000,
        retry_after_s=7,
    )
    async with serve(settings) as started:
        yield started


class channel_to:  # noqa: N801 (used as a context manager, like grpc's own)
    """A channel to the gRPC port on this machine."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )

    async def __aenter__(self) -> grpc.aio.Channel:
        return self.channel

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()


async def call(
    channel: grpc.aio.Channel, name: str, request: Message | bytes, timeout: float = 60
) -> Message:
    """One unary call of ``GRPCInferenceService`` (``request`` as a message or raw bytes)."""
    method = CALLS[name]
    stub = channel.unary_unary(
        method.path,
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=method.response.FromString,
    )
    return await stub(request, timeout=timeout)


async def health(channel: grpc.aio.Channel, service: str) -> Message:
    stub = health_pb2_grpc.HealthStub(channel)
    return await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=60)


def infer_request(name: str, shape: list[int], **fields: object) -> Message:
    """A ``ModelInferRequest`` for model catdog with one input."""
    request = M["ModelInferRequest"](model_name="catdog", **fields)  # type: ignore[arg-type]
    request.inputs.add(
        name=name, datatype="BYTES" if name == "image_bytes" else "FP32", shape=shape
    )
    return request


def framed(files: list[bytes]) -> bytes:
    """BYTES as raw tensor data: each element's length (4 bytes, little-endian), then it."""
    return b"".join(len(f).to_bytes(4, "little") + f for f in files)


async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for ``condition`` (polled), failing with ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The error's trailing metadata, less the request id every call carries (app/ops)."""
    return {k: v for k, v in error.trailing_metadata() or () if k != "x-request-id"}


async def test_contents_and_raw_bytes_answer_alike(served: Served) -> None:
    files = images(2)
    async with channel_to(served.app.state.grpc.port) as channel:
        request = infer_request("image_bytes", [2])
        request.inputs[0].contents.bytes_contents.extend(files)
        in_contents = await call(channel, "ModelInfer", request)
        request = infer_request("image_bytes", [2], raw_input_contents=[framed(files)])
        in_raw = await call(channel, "ModelInfer", request)
        request = infer_request("images", [2, 32, 32, 3])
        request.inputs[0].contents.fp32_contents.extend(pixels(files).ravel().tolist())
        from_pixels = await call(channel, "ModelInfer", request)
    assert not in_contents.raw_output_contents  # answered as asked: in contents
    table = np.array(in_contents.outputs[0].contents.fp32_contents).reshape(2, 2)
    assert list(in_contents.outputs[0].shape) == [2, 2]
    assert not in_raw.outputs[0].HasField("contents")
    raw_table = np.frombuffer(in_raw.raw_output_contents[0], "<f4").reshape(2, 2)
    np.testing.assert_allclose(table, raw_table, atol=TOLERANCE)
    pixel_table = np.array(from_pixels.outputs[0].contents.fp32_contents).reshape(2, 2)
    np.testing.assert_allclose(pixel_table, raw_table, atol=TOLERANCE)
    rest = await served.client.post(
        "/predict/batch",
        files=[("files", (f"{i}.jpg", f, "image/jpeg")) for i, f in enumerate(files)],
    )
    assert rest.status_code == 200, rest.text
    expected = [[p["probabilities"][c] for c in CLASSES] for p in rest.json()["predictions"]]
    np.testing.assert_allclose(raw_table, expected, atol=TOLERANCE)


def _malformed() -> dict[str, tuple[Message | bytes, str, str]]:
    """case: (request, HTTP status in the trailers, words of the message)."""
    jpeg = images(1)
    two_inputs = infer_request("image_bytes", [1], raw_input_contents=[framed(jpeg)] * 2)
    two_inputs.inputs.add(name="images", datatype="FP32", shape=[1, 32, 32, 3])
    both = infer_request("image_bytes", [1], raw_input_contents=[framed(jpeg)])
    both.inputs[0].contents.bytes_contents.extend(jpeg)
    wrong_field = infer_request("images", [1, 32, 32, 3])
    wrong_field.inputs[0].contents.int_contents.extend([0] * 3072)
    unknown_output = infer_request("image_bytes", [1], raw_input_contents=[framed(jpeg)])
    unknown_output.outputs.add(name="logits")
    bad_classification = infer_request("image_bytes", [1], raw_input_contents=[framed(jpeg)])
    bad_classification.outputs.add(name="probabilities").parameters[
        "classification"
    ].string_param = "two"
    nan = np.full(3072, 0.5, "<f4")
    nan[7] = np.nan
    return {
        "a NaN pixel": (
            infer_request("images", [1, 32, 32, 3], raw_input_contents=[nan.tobytes()]),
            "400",
            "1 are NaN or infinite",
        ),
        "not a message": (b"\xff\xff\xff", "400", "not a inference.ModelInferRequest"),
        "rank 68": (infer_request("images", [1, 32, 32, 3] + [1] * 64), "400", "at most 8"),
        "long datatype": (
            M["ModelInferRequest"](
                model_name="catdog", inputs=[{"name": "images", "datatype": "x" * 20_000}]
            ),
            "400",
            "is FP32, not xxx",
        ),
        "no inputs": (M["ModelInferRequest"](model_name="catdog"), "400", "exactly one input"),
        "two inputs": (two_inputs, "400", "exactly one input"),
        "two raw for one": (
            infer_request("image_bytes", [1], raw_input_contents=[framed(jpeg)] * 2),
            "400",
            "2 raw_input_contents",
        ),
        "contents and raw": (both, "400", "both contents and raw"),
        "wrong contents field": (wrong_field, "400", "fp32_contents"),
        "raw overruns": (
            infer_request("image_bytes", [1], raw_input_contents=[b"\x10\0\0\0abc"]),
            "400",
            "overruns",
        ),
        "shape says more": (
            infer_request("image_bytes", [2], raw_input_contents=[framed(jpeg)]),
            "400",
            "but 1 elements",
        ),
        "pixels short": (
            infer_request("images", [1, 32, 32, 3], raw_input_contents=[b"\0" * 12]),
            "400",
            "needs 12288 bytes",
        ),
        "not an image": (
            infer_request("image_bytes", [1], raw_input_contents=[framed([b"hello"])]),
            "415",
            "not a recognised image",
        ),
        "corrupt image": (
            infer_request("image_bytes", [1], raw_input_contents=[framed([jpeg[0][:200]])]),
            "422",
            "",
        ),
        "empty image": (
            infer_request("image_bytes", [1], raw_input_contents=[framed([b""])]),
            "400",
            "is empty",
        ),
        "too many": (
            infer_request("image_bytes", [3], raw_input_contents=[framed(jpeg * 3)]),
            "413",
            "at most 2",
        ),
        "image too large": (
            infer_request("image_bytes", [1], raw_input_contents=[framed([b"\xff" * 60_000])]),
            "413",
            "upload limit",
        ),
        "unknown output": (unknown_output, "400", "the only output is probabilities"),
        "bad classification": (bad_classification, "400", "classification"),
    }


async def test_malformed_calls_are_invalid_argument_and_the_service_goes_on(
    served: Served,
) -> None:
    async with channel_to(served.app.state.grpc.port) as channel:
        for case, (request, status, words) in _malformed().items():
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(channel, "ModelInfer", request)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, error.value)
            assert words in (error.value.details() or ""), (case, error.value.details())
            assert len(error.value.details() or "") <= 512, case  # echoed input is cut short
            assert trailers(error.value)["catdog-http-status"] == status, case
        wrong_model = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
        wrong_model.model_name = "dog"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(channel, "ModelInfer", wrong_model)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        # Over the message limit (2 files of 50 kB, plus 64 kB): refused by gRPC itself.
        huge = infer_request("image_bytes", [1], raw_input_contents=[b"\0" * 400_000])
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(channel, "ModelInfer", huge)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        good = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
        answer = await call(channel, "ModelInfer", good)
        assert list(answer.outputs[0].shape) == [1, 2]
    assert served.app.state.service.admission.in_flight == 0
    text = await metrics_text(served.client)
    path = "/inference.GRPCInferenceService/ModelInfer"
    # 19 malformed, and the message over the limit: gRPC dropped it, so the call read none
    assert f'catdog_grpc_requests_total{{code="INVALID_ARGUMENT",method="{path}"}} 20.0' in text
    assert f'catdog_grpc_requests_total{{code="OK",method="{path}"}} 1.0' in text
    assert f'catdog_request_duration_seconds_count{{route="{path}"}}' in text


async def test_overload_is_unavailable_with_retry_after(served: Served) -> None:
    """Room for one image, but the call has two: refused when admitted, as REST's 503."""
    service = served.app.state.service
    request = infer_request("image_bytes", [2], raw_input_contents=[framed(images(2))])
    async with channel_to(served.app.state.grpc.port) as channel:
        with service.admission.admit(3), pytest.raises(grpc.aio.AioRpcError) as error:
            await call(channel, "ModelInfer", request)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "busy" in (error.value.details() or "")
        assert trailers(error.value) == {"catdog-http-status": "503", "retry-after": "7"}
        assert len((await call(channel, "ModelInfer", request)).raw_output_contents) == 1


@pytest.mark.parametrize(
    "path",
    [
        CALLS["ModelInfer"].path,
        TFSERVING.services["tensorflow.serving.PredictionService"]["Predict"].path,
        TFSERVING.services["tensorflow.serving.PredictionService"]["Classify"].path,
    ],
)
async def test_a_full_server_refuses_before_reading_the_message(served: Served, path: str) -> None:
    """No room for one image: a call that carries images is refused at once, though its
    message never comes (read first, it would wait for it until the body timeout)."""

    async def nothing() -> AsyncIterator[bytes]:
        await asyncio.sleep(3600)
        yield b""

    async with channel_to(served.app.state.grpc.port) as channel:
        infer = channel.stream_unary(path)
        full = served.app.state.service.admission.admit(4)
        with full, pytest.raises(grpc.aio.AioRpcError) as error:
            await infer(nothing(), timeout=60)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert trailers(error.value) == {"catdog-http-status": "503", "retry-after": "7"}


async def test_a_clients_share_counts_its_grpc_calls(tiny_model_base: Path) -> None:
    settings = settings_for(
        tiny_model_base,
        grpc_address="127.0.0.1:0",
        max_images_per_client=2,
        max_files_per_request=2,
    )
    request = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
    async with serve(settings) as (app, _), channel_to(app.state.grpc.port) as channel:
        with app.state.service.admission.admit(2, Upload("127.0.0.1")):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(channel, "ModelInfer", request)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "this client" in (error.value.details() or "")
        with app.state.service.admission.admit(2, Upload("10.0.0.9")):  # someone else's
            assert len((await call(channel, "ModelInfer", request)).raw_output_contents) == 1


async def test_not_ready(served: Served) -> None:
    service = served.app.state.service
    service.accepting = False  # as while stopping
    try:
        async with channel_to(served.app.state.grpc.port) as channel:
            assert (await call(channel, "ServerLive", M["ServerLiveRequest"]())).live
            assert not (await call(channel, "ServerReady", M["ServerReadyRequest"]())).ready
            ready = await call(channel, "ModelReady", M["ModelReadyRequest"](name="catdog"))
            assert not ready.ready
    finally:
        service.accepting = True


async def test_a_cancelled_call_releases_its_room(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that cancels while its image waits in the batcher's queue."""
    service = served.app.state.service
    held = asyncio.Event()
    submit, run_alone = service.batcher.submit, service.batcher.run_alone

    async def stalled(*args: object) -> object:
        held.set()
        await asyncio.sleep(3600)
        return await submit(*args)

    monkeypatch.setattr(service.batcher, "submit", stalled)
    monkeypatch.setattr(service.batcher, "run_alone", stalled)  # a lone image's way
    request = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
    async with channel_to(served.app.state.grpc.port) as channel:
        pending = asyncio.create_task(call(channel, "ModelInfer", request))
        await asyncio.wait_for(held.wait(), 60)  # the image is in the batcher's queue
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await until(lambda: service.admission.in_flight == 0, "its room to be released")
        monkeypatch.setattr(service.batcher, "submit", submit)
        monkeypatch.setattr(service.batcher, "run_alone", run_alone)
        assert len((await call(channel, "ModelInfer", request)).raw_output_contents) == 1


async def test_a_taken_port_stops_startup(served: Served, tiny_model_base: Path) -> None:
    taken = served.app.state.grpc.port
    app = make_app(settings_for(tiny_model_base, grpc_address=f"127.0.0.1:{taken}"))
    with pytest.raises(RuntimeError, match="Failed to bind"):
        async with LifespanManager(app, startup_timeout=180):
            pass


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:50512", "127.0.0.1"),
        ("ipv6:[::1]:50512", "::1"),
        ("ipv6:%5B2001:DB8::7%5D:443", "2001:db8::7"),
        ("ipv6:[::ffff:10.1.2.3]:9", "10.1.2.3"),
        ("unix:/run/catdog.sock", "/run/catdog.sock"),
        ("", None),
    ],
)
def test_peer_key(peer: str, key: str | None) -> None:
    assert peer_key(peer) == key


async def test_a_fault_of_the_service_is_internal_and_logged(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = served.app.state.service

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "classify", broken)
    request = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
    async with channel_to(served.app.state.grpc.port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(channel, "ModelInfer", request)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert error.value.details() == "internal error (RuntimeError)"  # no internals leak
    assert trailers(error.value)["catdog-http-status"] == "500"
    assert "ModelInfer failed" in caplog.text and "a bug" in caplog.text


async def test_shutdown_refuses_new_calls_and_finishes_those_in_flight(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What SIGTERM starts (``shutdown_started``): not ready, new calls refused, the call in
    flight answered."""
    app, service = served.app, served.app.state.service
    release = asyncio.Event()
    submit, run_alone = service.batcher.submit, service.batcher.run_alone

    async def held(*args: object) -> object:
        await release.wait()
        return await submit(*args)

    async def held_alone(*args: object) -> object:  # a lone image's way
        await release.wait()
        return await run_alone(*args)

    monkeypatch.setattr(service.batcher, "submit", held)
    monkeypatch.setattr(service.batcher, "run_alone", held_alone)
    request = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
    async with channel_to(app.state.grpc.port) as channel:
        in_flight = asyncio.create_task(call(channel, "ModelInfer", request))
        await until(lambda: service.admission.in_flight > 0, "the call to be admitted")
        shutdown_started(app)
        assert (await served.client.get("/readyz")).status_code == 503
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(channel, "ServerLive", M["ServerLiveRequest"]())
        # Refused by the stopping server (GOAWAY: UNAVAILABLE, which clients retry on
        # another connection), or CANCELLED when the call reached grpc-core in the instant
        # its shutdown began (grpc/grpc#41785: calls not yet handed to the application are
        # cancelled). Either way no handler ran.
        assert error.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert "/inference.GRPCInferenceService/ServerLive" not in await metrics_text(served.client)
        release.set()
        answer = await in_flight
    assert list(answer.outputs[0].shape) == [1, 2]


async def test_connections_past_the_cap_are_closed(tiny_model_base: Path) -> None:
    """Idle HTTP/2 connections that never start a call: past ``max_connections`` each is
    closed at once, so they cannot take every file the process may open."""
    settings = settings_for(
        tiny_model_base, grpc_address="127.0.0.1:0", max_connections=3, header_timeout_s=300
    )  # the three within the cap never finish their handshake: only the cap closes here
    empty_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an HTTP/2 SETTINGS frame
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + empty_settings
    async with serve(settings) as (app, _):
        streams = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", app.state.grpc.port)
            writer.write(preface)
            streams.append((reader, writer))

        async def closed_by_server(reader: asyncio.StreamReader) -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass

        waits = [asyncio.create_task(closed_by_server(reader)) for reader, _ in streams]
        await until(lambda: sum(t.done() for t in waits) >= 5, "5 connections closed")
        assert sum(t.done() for t in waits) == 5  # the 3 within the cap are still open
        for task in waits:
            task.cancel()
        for _, writer in streams:
            writer.close()


async def test_sigterm_stops_grpc_while_http_drains(tiny_model_base: Path, tmp_path: Path) -> None:
    """On a real process: SIGTERM during a stalled REST upload. gRPC refuses at once
    (the load balancer moves on) while uvicorn drains HTTP; then the process exits."""
    grpc_port = free_port()
    server = start_uvicorn(
        tiny_model_base,
        tmp_path / "server.log",
        grpc_address=f"127.0.0.1:{grpc_port}",
        body_timeout_s=300,
        graceful_shutdown_s=30,
    )
    try:
        wait_ready(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(multipart_head(100_000) + b"--" + BOUNDARY.encode() + b"\r\n" + b"x" * 1000)
        await writer.drain()
        async with channel_to(grpc_port) as channel:
            assert (await call(channel, "ServerReady", M["ServerReadyRequest"]())).ready
            server.process.send_signal(signal.SIGTERM)
            codes: list[grpc.StatusCode] = []
            deadline = asyncio.get_running_loop().time() + 30
            while grpc.StatusCode.UNAVAILABLE not in codes:  # within moments of the signal
                assert asyncio.get_running_loop().time() < deadline, codes
                try:
                    await call(channel, "ServerReady", M["ServerReadyRequest"](), timeout=10)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())  # a call at that very moment: CANCELLED
            assert server.process.poll() is None, server.log_tail()  # HTTP still draining
        writer.close()  # the stalled upload goes: uvicorn's drain ends, the process exits
        code = await asyncio.to_thread(server.process.wait, 60)
    finally:
        stop(server, grace=5)
    assert code in (0, -signal.SIGTERM), server.log_tail()


async def test_a_call_whose_message_never_comes_is_answered(tiny_model_base: Path) -> None:
    """A stream opened on ModelInfer that sends nothing is ended after the body timeout
    (such streams could otherwise hold every call slot); a call that ends without a
    message is answered at once, whatever the method."""
    settings = settings_for(tiny_model_base, grpc_address="127.0.0.1:0", body_timeout_s=1)
    async with serve(settings) as (app, client), channel_to(app.state.grpc.port) as channel:

        async def nothing() -> AsyncIterator[bytes]:
            await asyncio.sleep(3600)
            yield b""

        async def none_at_all() -> AsyncIterator[bytes]:
            return
            yield b""

        infer = channel.stream_unary(CALLS["ModelInfer"].path)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await infer(nothing(), timeout=30)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not arrive within 1 s" in (error.value.details() or "")
        assert trailers(error.value)["catdog-http-status"] == "408"
        for name in ("ModelInfer", "ServerLive", "ModelMetadata"):
            empty = channel.stream_unary(CALLS[name].path)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await empty(none_at_all(), timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert error.value.details() == "no request message", name
        text = await metrics_text(client)
        path = CALLS["ModelInfer"].path
        assert f'catdog_grpc_requests_total{{code="DEADLINE_EXCEEDED",method="{path}"}}' in text


async def test_a_second_message_on_a_unary_call_is_refused(served: Served) -> None:
    """A unary call is one message and the end of its stream: a second is not ignored."""
    message = M["ServerLiveRequest"]().SerializeToString()

    async def two() -> AsyncIterator[bytes]:
        yield message
        yield message

    async with channel_to(served.app.state.grpc.port) as channel:
        live = channel.stream_unary(CALLS["ServerLive"].path)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await live(two(), timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one request message" in (error.value.details() or "")
        assert (await call(channel, "ServerLive", M["ServerLiveRequest"]())).live


async def test_compressed_messages_are_refused(served: Served) -> None:
    """A few hundred kB of gzip could inflate to the whole message limit before any check."""
    request = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
    async with channel_to(served.app.state.grpc.port) as channel:
        stub = channel.unary_unary(
            CALLS["ModelInfer"].path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=M["ModelInferResponse"].FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub(request, compression=grpc.Compression.Gzip, timeout=60)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "gzip" in (error.value.details() or "")
        answer = await stub(request, timeout=60)  # uncompressed, on the same channel
        assert list(answer.outputs[0].shape) == [1, 2]


async def test_one_client_cannot_hold_every_call_slot(tiny_model_base: Path) -> None:
    """Calls that never send their message: one client may hold an eighth of the slots
    (max_connections 200: 25); the next is refused at once; once they end, it is served."""
    settings = settings_for(tiny_model_base, grpc_address="127.0.0.1:0", max_connections=200)
    request = infer_request("image_bytes", [1], raw_input_contents=[framed(images(1))])
    async with serve(settings) as (app, _), channel_to(app.state.grpc.port) as channel:

        async def nothing() -> AsyncIterator[bytes]:
            await asyncio.sleep(3600)
            yield b""

        infer = channel.stream_unary(CALLS["ModelInfer"].path)
        stalled = [infer(nothing(), timeout=60) for _ in range(25)]
        waiting = app.state.grpc._waiting_by_client
        await until(lambda: sum(waiting.values()) == 25, "25 calls waiting in the server")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await infer(nothing(), timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "25 calls waiting for their message" in (error.value.details() or "")
        assert trailers(error.value)["retry-after"] == "1"
        for call_ in stalled:
            call_.cancel()
        await until(lambda: not waiting, "the cancelled calls to end")
        assert len((await call(channel, "ModelInfer", request)).raw_output_contents) == 1


async def test_a_message_of_many_tiny_fields_is_refused_before_it_is_parsed(
    served: Served,
) -> None:
    """70,000 empty files in bytes_contents: 140 kB that protobuf would make ~5 MB of
    objects of (a message at the size limit, hundreds of times that)."""
    request = infer_request("image_bytes", [70_000])
    request.inputs[0].contents.bytes_contents.extend([b""] * 70_000)
    async with channel_to(served.app.state.grpc.port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(channel, "ModelInfer", request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "the message holds more than 65536 fields"
    assert trailers(error.value)["catdog-http-status"] == "413"


async def test_a_refused_request_is_not_kept_after_its_answer(served: Served) -> None:
    """Neither the decoding's error (raised anew, without the frames that hold each
    file) nor grpc.aio's record of the last aborted call keeps the refused files: with
    the cycle collector off, nothing may still refer to them once the call is answered."""
    marker = b"NOT-AN-IMAGE-" + bytes(range(16))
    files = [marker + bytes(20_000), marker + bytes(30_000)]
    request = infer_request("image_bytes", [2], raw_input_contents=[framed(files)])

    def holders() -> list[str]:
        found = []
        for frame in (o for o in gc.get_objects() if isinstance(o, types.FrameType)):
            for name, value in frame.f_locals.items():
                held = value.raws if isinstance(value, Call) else [value]
                if any(isinstance(v, bytes | memoryview) and marker in bytes(v) for v in held):
                    found.append(f"{frame.f_code.co_name}: {name}")
        return found

    gc.collect()
    gc.disable()
    try:
        async with channel_to(served.app.state.grpc.port) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(channel, "ModelInfer", request)
            assert trailers(error.value)["catdog-http-status"] == "415"
            del error
            # A decode of the other file may still be finishing in its thread for a moment.
            await until(lambda: holders() == [], "the refused files to be let go", timeout=10)
    finally:
        gc.enable()
