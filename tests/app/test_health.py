"""Liveness, readiness, and refusing to start without a usable model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.core.config import Settings
from app.core.gate import body_limit, route_label
from app.main import create_app
from tests.app.helpers import (
    STARTUP_TIMEOUT,
    client_for,
    good_image,
    make_app,
    settings_for,
    upload,
)


async def test_ready_only_after_startup(tiny_model_base: Path) -> None:
    app = make_app(settings_for(tiny_model_base))
    async with client_for(app) as client:
        # No lifespan yet: alive, but not ready, and predictions are refused cleanly.
        response = await client.get("/healthz")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["status"] == "not ready"
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 503, response.text
        assert "not ready" in response.json()["detail"]
        assert "retry-after" in response.headers

        async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT, shutdown_timeout=60):
            response = await client.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "ready", "model_version": "1"}
            response = await client.get("/healthz")
            assert response.status_code == 200, response.text
            response = await client.post("/predict", files=upload(good_image()))
            assert response.status_code == 200, response.text

        # After shutdown the service says so again.
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text


def _missing(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    return base / "does-not-exist", base / "does-not-exist"


def _empty(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    base.mkdir()
    return base, base


def _no_saved_model(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    (base / "1").mkdir(parents=True)
    shutil.copy(tiny_model_base / "1" / "metadata.json", base / "1")
    return base, base / "1"


def _bad_metadata(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    shutil.copytree(tiny_model_base, base)
    (base / "1" / "metadata.json").write_text("{ this is not json")
    return base, base / "1" / "metadata.json"


def _wrong_contract(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    shutil.copytree(tiny_model_base, base)
    path = base / "1" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["image_size"] = [64, 64]  # the SavedModel takes 32 x 32
    path.write_text(json.dumps(metadata))
    return base, base / "1"


def _garbage_saved_model(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    shutil.copytree(tiny_model_base, base)
    (base / "1" / "saved_model.pb").write_bytes(b"this is not a protobuf" * 10)
    return base, base / "1"


def _garbage_litert(base: Path, tiny_model_base: Path) -> tuple[Path, Path]:
    shutil.copytree(tiny_model_base, base)
    (base / "1" / "model.tflite").write_bytes(b"this is not a flatbuffer" * 10)
    return base, base / "1" / "model.tflite"


BROKEN = {
    "missing-folder": _missing,
    "no-versions": _empty,
    "no-saved-model": _no_saved_model,
    "bad-metadata-json": _bad_metadata,
    "metadata-disagrees-with-model": _wrong_contract,
    "garbage-saved-model": _garbage_saved_model,
    "garbage-litert-file": _garbage_litert,
}
# Where a breakage is in one runtime's file, the service is started on that runtime.
RUNTIME = {"garbage-saved-model": "tensorflow", "garbage-litert-file": "litert"}


@pytest.mark.parametrize("kind", list(BROKEN))
async def test_startup_fails_naming_the_path(
    tiny_model_base: Path, tmp_path: Path, kind: str
) -> None:
    model_dir, named = BROKEN[kind](tmp_path / "catdog", tiny_model_base)
    app = make_app(settings_for(model_dir, runtime=RUNTIME.get(kind, "auto")))
    with pytest.raises(RuntimeError) as raised:
        async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT):
            pass
    message = str(raised.value)
    assert "cannot start" in message
    assert str(named.resolve()) in message or str(named) in message, message
    async with client_for(app) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503


async def test_healthz_answers_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "model_version": None}


def test_early_refusals_are_labelled_by_route_template_not_by_path() -> None:
    # A client picks the model name and version in a protocol URL; labels stay bounded.
    assert route_label("/v2/models/anything-at-all/infer") == "/v2/models/{name}/infer"
    assert (
        route_label("/v2/models/catdog/versions/17/infer")
        == "/v2/models/{name}/versions/{version}/infer"
    )
    assert route_label("/v1/models/x:predict") == "/v1/models/{name}:predict"
    assert route_label("/v1/models/x/versions/2:classify") == (
        "/v1/models/{name}/versions/{version}:classify"
    )
    assert route_label("/predict/batch") == "/predict/batch"
    # Every path the gate limits gets one of those labels: the two share one matcher.
    assert body_limit(Settings(), "/v2/models/a/b/c/infer") is None
    # A ":" in a name or version still reaches the routes, so it is gated too (was ungated).
    assert body_limit(Settings(), "/v1/models/catdog/versions/2:x:predict") is not None
    assert route_label("/v1/models/catdog/versions/2:x:predict") == (
        "/v1/models/{name}/versions/{version}:predict"
    )
    templates = set(create_app(Settings()).openapi()["paths"])
    for path in ("/v2/models/a/infer", "/v1/models/a/versions/1:predict", "/v1/models/a:classify"):
        assert route_label(path) in templates  # the same label as a routed request's


async def test_one_middleware_counts_and_marks_every_answer(tiny_model_base: Path) -> None:
    # Request id, metrics and the gate are one layer: an early refusal is counted under
    # its route template and carries the request id, as a routed answer does.
    app = make_app(settings_for(tiny_model_base))
    assert [m.cls.__name__ for m in app.user_middleware] == ["GateMiddleware"]
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT), client_for(app) as client:
        large = {"content-length": str(10**9), "x-request-id": "rid-413"}
        refused = await client.post("/predict", content=b"x", headers=large)
        assert refused.status_code == 413 and refused.headers["x-request-id"] == "rid-413"
        assert refused.json()["request_id"] == "rid-413"
        ok = await client.get("/healthz")
        assert len(ok.headers["x-request-id"]) == 32
        metrics = (await client.get("/metrics")).text
    assert 'catdog_requests_total{method="POST",route="/predict",status="413"} 1.0' in metrics
