"""The operations layer (app/ops) against real ``python -m app`` processes, REST and gRPC.

API keys refused and accepted with the real clients (httpx, ``tritonclient`` over
OIP REST, ``tensorflow-serving-api`` over gRPC), the key file re-read on change;
request ids in headers, error bodies, gRPC trailers and JSON log lines; spans
received by a local OTLP/HTTP receiver, continuing the caller's ``traceparent``;
payload records in a file and on an HTTP sink. Every server runs the shipped
model with LiteRT and gRPC on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.http as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from app.core.metrics import Metrics
from app.core.service import Classification
from app.ops.keys import parse
from app.ops.payload_log import PayloadLog
from servicekit import Server, free_port, uvicorn_server
from tests.app.helpers import good_image

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "catdog"
KEY, OTHER = "k-9f2c1d7e-first", "k-55aa03bc-second"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
GRPC_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
GRPC_TRACEPARENT = f"00-{GRPC_TRACE_ID}-b7ad6b7169203331-01"


@contextlib.contextmanager
def server(tmp: Path, env: dict[str, str] | None = None, **settings: object) -> Iterator[Server]:
    port = free_port()
    options = {"poll_interval_s": 0, "grpc_address": f"127.0.0.1:{port}", **settings}
    with uvicorn_server(SHIPPED, tmp / "server.log", env=env, **options) as started:
        started.grpc_port = port  # type: ignore[attr-defined]
        yield started


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    files = {"file": ("cat.jpg", body, "image/jpeg")}
    return httpx.post(f"{url}/predict", files=files, headers=headers or {}, timeout=60)


def grpc_predict(port: int, body: bytes, metadata: tuple = ()) -> tuple[object, tuple]:
    """TF Serving ``Predict`` of one image file; (response, trailing metadata)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "catdog"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([body]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, metadata=metadata, timeout=60)
    return response, call.trailing_metadata()


def grpc_error(port: int, body: bytes, metadata: tuple = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        grpc_predict(port, body, metadata)
    return error.value


# ---------------------------------------------------------------- API keys


def test_key_file_lines(tmp_path: Path) -> None:
    digest = hashlib.sha256(OTHER.encode()).hexdigest()
    text = f"# keys\n\n{KEY}  # first\nsha256:{digest.upper()}\n"
    assert parse(text) == [hashlib.sha256(KEY.encode()).hexdigest(), digest]
    with pytest.raises(ValueError, match="line 1"):
        parse("sha256:abc")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("keys")
    keys = tmp / "keys"
    keys.write_text(f"{KEY}\nsha256:{hashlib.sha256(OTHER.encode()).hexdigest()}\n")
    with server(tmp, api_keys_file=keys, log_format="json") as started:
        yield started, keys


def test_rest_refuses_a_missing_or_wrong_key(keyed: tuple[Server, Path]) -> None:
    url = keyed[0].url
    missing = post(url, good_image())
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "missing API key" in missing.json()["detail"]
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    wrong = post(url, good_image(), {"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert httpx.get(f"{url}/v1/models/catdog").status_code == 401  # model metadata


def test_rest_accepts_a_key_or_its_sha256(keyed: tuple[Server, Path]) -> None:
    url = keyed[0].url
    for key in (KEY, OTHER):
        response = post(url, good_image(), {"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
        assert httpx.get(f"{url}{path}").status_code == 200, path


def test_oip_client_needs_the_key(keyed: tuple[Server, Path]) -> None:
    client = triton.InferenceServerClient(keyed[0].url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="401|API key"):
        client.get_model_metadata("catdog")
    metadata = client.get_model_metadata("catdog", headers={"Authorization": f"Bearer {KEY}"})
    assert metadata["name"] == "catdog"


def test_grpc_refuses_and_accepts(keyed: tuple[Server, Path]) -> None:
    port = keyed[0].grpc_port  # type: ignore[attr-defined]
    assert grpc_error(port, good_image()).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = grpc_error(port, good_image(), (("authorization", "Bearer nope"),))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    response, _ = grpc_predict(port, good_image(), (("authorization", f"Bearer {KEY}"),))
    assert "probabilities" in response.outputs


def test_keys_are_counted_by_id_and_never_logged(keyed: tuple[Server, Path]) -> None:
    started, _ = keyed
    post(started.url, good_image(), {"Authorization": f"Bearer {KEY}"})
    metrics = httpx.get(f"{started.url}/metrics").text
    key_id = hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert f'catdog_key_requests_total{{key_id="{key_id}"}}' in metrics
    assert 'catdog_auth_refused_total{reason="missing"}' in metrics
    assert KEY not in metrics and KEY not in started.log()


def test_key_file_lines_are_json(keyed: tuple[Server, Path]) -> None:
    told = [line for line in keyed[0].log().splitlines() if "API keys: 2 read" in line]
    assert told and all(json.loads(line)["logger"] == "catdog.keys" for line in told), told


def test_key_file_is_reread_on_change(keyed: tuple[Server, Path]) -> None:
    started, keys = keyed
    original = keys.read_text()
    new = "k-3c0ffee-rotated"
    try:
        keys.write_text(f"{new}\n")
        deadline = time.monotonic() + 10
        while (
            post(started.url, good_image(), {"Authorization": f"Bearer {new}"}).status_code != 200
        ):
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.3)
        assert (
            post(started.url, good_image(), {"Authorization": f"Bearer {KEY}"}).status_code == 401
        )
    finally:
        keys.write_text(original)
        time.sleep(1.2)  # the next check reads the original keys back


# ---------------------------------------------------------------- request ids, JSON logs


def test_request_ids_and_json_logs(tmp_path: Path) -> None:
    with server(tmp_path, log_format="json") as started:
        answer = post(started.url, good_image(), {"x-request-id": "rid-rest-1"})
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "rid-rest-1"
        made = post(started.url, good_image())
        assert len(made.headers["x-request-id"]) == 32
        refused = post(started.url, b"not an image", {"x-request-id": "rid-bad"})
        assert refused.status_code >= 400 and refused.json()["request_id"] == "rid-bad"
        _, trailers = grpc_predict(started.grpc_port, good_image(), (("x-request-id", "rid-g"),))
        assert ("x-request-id", "rid-g") in tuple(trailers)
        error = grpc_error(started.grpc_port, b"not an image", (("x-request-id", "rid-g2"),))
        assert ("x-request-id", "rid-g2") in tuple(error.trailing_metadata())
        label = answer.json()["label"]
        time.sleep(0.5)
        log = started.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines and all("level" in line and "message" in line for line in lines)
    [access] = [line for line in lines if line.get("request_id") == "rid-rest-1"]
    assert access["route"] == "/predict" and access["status"] == 200
    assert access["label"] == label and access["model_version"] and access["duration_ms"] > 0
    [grpc_line] = [line for line in lines if line.get("request_id") == "rid-g"]
    assert grpc_line["protocol"] == "grpc" and grpc_line["status"] == "OK"
    assert grpc_line["route"].endswith("/Predict") and grpc_line["label"]
    # uvicorn's own lines too (the runtime's native libraries print beside Python logging)
    messages = [line["message"] for line in lines]
    assert any("Application startup complete" in m for m in messages), messages
    assert "Application startup complete" not in "".join(
        line for line in log.splitlines() if not line.startswith("{")
    )


# ---------------------------------------------------------------- traces


class _Sink(BaseHTTPRequestHandler):
    """Collects POST bodies (an OTLP/HTTP receiver, a CloudEvents sink)."""

    bodies: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:  # noqa: N802  # http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        self.bodies.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def sink() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    bodies: list[tuple[str, str, bytes]] = []
    handler = type("Sink", (_Sink,), {"bodies": bodies})
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}", bodies
    finally:
        http.shutdown()


def spans_of(bodies: list[tuple[str, str, bytes]]) -> list[tuple[str, str, dict]]:
    """(name, trace id, attributes) of every span the receiver got."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    found = []
    for path, _, body in bodies:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value for a in span.attributes}
                    found.append((span.name, span.trace_id.hex(), attributes))
    return found


def test_spans_reach_an_otlp_receiver(tmp_path: Path) -> None:
    with sink() as (endpoint, bodies):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with server(tmp_path, env=env) as started:
            assert post(started.url, good_image(), {"traceparent": TRACEPARENT}).status_code == 200
            grpc_predict(started.grpc_port, good_image(), (("traceparent", GRPC_TRACEPARENT),))
            for probe in ("healthz", "readyz", "metrics", "v2/health/ready"):
                assert httpx.get(f"{started.url}/{probe}").status_code == 200
            deadline = time.monotonic() + 20
            stages = {"admission", "decode", "queue wait", "model call", "encode"}
            while time.monotonic() < deadline:
                seen = spans_of(bodies)
                rest = {n for n, t, _ in seen if t == TRACE_ID}
                over_grpc = {n for n, t, _ in seen if t == GRPC_TRACE_ID}
                if stages <= rest and stages <= over_grpc:
                    break
                time.sleep(0.3)
    spans = spans_of(bodies)
    rest = [(n, a) for n, t, a in spans if t == TRACE_ID]
    assert stages <= {n for n, _ in rest}, rest
    [server_span] = [a for n, a in rest if n.startswith("POST /predict")]
    assert server_span["http.route"].string_value == "/predict"
    assert server_span["http.request.method"].string_value == "POST"  # the stable conventions
    [call] = [a for n, a in rest if n == "model call"]
    assert call["catdog.batch_size"].int_value == 1
    assert call["catdog.runtime"].string_value == "litert"
    assert not [n for n, _, _ in spans if n.startswith("GET")], "a probe was traced"
    grpc_spans = {n for n, t, _ in spans if t == GRPC_TRACE_ID}  # the caller's trace, gRPC
    assert stages <= grpc_spans and any("Predict" in n for n in grpc_spans), grpc_spans


# ---------------------------------------------------------------- payload log

ANSWER = Classification("cat", 0, {"cat": 0.9, "dog": 0.1}, "1")  # offered with each image


def records_counted(metrics: Metrics, result: str) -> float | None:
    """``catdog_payload_log_records_total{result}`` of a ``PayloadLog``'s metrics."""
    return metrics.registry.get_sample_value("catdog_payload_log_records_total", {"result": result})


def test_payload_records_in_a_file(tmp_path: Path) -> None:
    target = tmp_path / "payload.jsonl"
    images = [good_image(seed) for seed in range(3)]
    with server(tmp_path, payload_log=str(target)) as started:
        ids = [post(started.url, i).headers["x-request-id"] for i in images]
        grpc_predict(started.grpc_port, images[0])
        deadline = time.monotonic() + 10
        while not target.exists() or len(target.read_text().splitlines()) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        metrics = httpx.get(f"{started.url}/metrics").text
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["request_id"] for r in records[:3]] == ids
    assert [r["sha256"] for r in records] == [hashlib.sha256(i).hexdigest() for i in images] + [
        hashlib.sha256(images[0]).hexdigest()
    ]
    assert [r["protocol"] for r in records] == ["rest"] * 3 + ["grpc"]
    for record, image in zip(records, images):
        assert record["bytes"] == len(image) and record["pixels"][0] > 0
        assert set(record["probabilities"]) == {"cat", "dog"} and record["label"]
        assert {"known", "ood_score", "model_version", "latency_ms", "time"} <= set(record)
        assert image.hex()[:64] not in json.dumps(record)
    assert 'catdog_payload_log_records_total{result="written"} 4.0' in metrics


def test_payload_records_as_cloudevents_at_a_sampled_rate(tmp_path: Path) -> None:
    with sink() as (url, bodies), server(tmp_path, payload_log=url, payload_log_rate=0.5) as s:
        for seed in range(40):
            assert post(s.url, good_image(seed)).status_code == 200
        time.sleep(1.0)
    events = [json.loads(body) for _, kind, body in bodies]
    assert all(kind.startswith("application/cloudevents+json") for _, kind, _ in bodies)
    assert 5 <= len(events) <= 35, len(events)  # half of 40, give or take chance
    for event in events:
        assert event["specversion"] == "1.0" and event["type"] == "org.catdog.prediction"
        assert event["data"]["sha256"] and event["subject"] == event["data"]["request_id"]


class _SlowSink(_Sink):
    def do_POST(self) -> None:  # noqa: N802  # http.server's name
        time.sleep(0.5)
        super().do_POST()


@pytest.mark.parametrize("bound", ["records", "bytes"])
def test_a_full_payload_queue_drops_and_counts(bound: str) -> None:
    """The request path never waits for the sink: past the queue's records, or its
    bytes of images waiting to be hashed, records are dropped."""
    bodies: list[tuple[str, str, bytes]] = []
    http = ThreadingHTTPServer(("127.0.0.1", 0), type("Slow", (_SlowSink,), {"bodies": bodies}))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    metrics = Metrics()
    url = f"http://127.0.0.1:{http.server_address[1]}"
    images = [good_image(seed) for seed in range(10)]
    limit = {"queue_size": 2} if bound == "records" else {"queue_bytes": 2 * max(map(len, images))}
    payload = PayloadLog(url, 1.0, metrics, **limit)
    started = time.perf_counter()
    for image in images:
        payload.offer([image], [ANSWER], 0.01)
    offered = time.perf_counter() - started
    payload.close(timeout=10)
    http.shutdown()
    dropped = records_counted(metrics, "dropped") or 0
    written = records_counted(metrics, "written") or 0
    assert dropped >= 6 and written + dropped == 10, (dropped, written)
    assert len(bodies) == written
    assert offered < 3, "offering waited for the sink (0.5 s a record)"


def test_a_payload_record_hashes_the_image_as_answered(tmp_path: Path) -> None:
    """The writer hashes later, so a view into a body that is reused meanwhile is copied."""
    target = tmp_path / "payload.jsonl"
    payload = PayloadLog(str(target), 1.0, Metrics())
    body = bytearray(good_image())
    answered = hashlib.sha256(body).hexdigest()
    payload.offer([memoryview(body)], [ANSWER], 0)
    body[:] = bytes(len(body))  # the buffer reused for the next request
    payload.close()
    [record] = [json.loads(line) for line in target.read_text().splitlines()]
    assert record["sha256"] == answered and record["pixels"][0] > 0


class _GarbledSink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802  # http.server's name
        self.rfile.read(int(self.headers["content-length"]))
        self.wfile.write(b"garbage\r\n\r\n")  # not an HTTP status line


def test_a_garbled_sink_is_counted_and_the_writer_goes_on() -> None:
    """A sink's answer that is not HTTP fails its record; the next records still go out,
    and the images they held are let go."""
    http = ThreadingHTTPServer(("127.0.0.1", 0), _GarbledSink)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    metrics = Metrics()
    payload = PayloadLog(f"http://127.0.0.1:{http.server_address[1]}", 1.0, metrics)
    for seed in range(3):
        payload.offer([good_image(seed)], [ANSWER], 0.01)
    payload.close(timeout=10)
    http.shutdown()
    assert records_counted(metrics, "failed") == 3
    assert not payload._writer.is_alive() and payload._held == 0  # stopped by close()


def test_a_tensor_past_the_byte_bound_is_dropped() -> None:
    metrics = Metrics()
    payload = PayloadLog("/dev/null", 1.0, metrics, queue_bytes=1000)
    payload.offer([np.zeros((32, 32, 3), np.float32)], [ANSWER], 0.01)  # 12,288 bytes
    payload.close()
    assert records_counted(metrics, "dropped") == 1
    assert payload._held == 0
