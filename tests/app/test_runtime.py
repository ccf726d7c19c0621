"""The service picks its runtime: LiteRT without TensorFlow in the process, or TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servicekit import value
from tests.app.helpers import good_image, metrics_text, serve, settings_for, upload

ROOT = Path(__file__).resolve().parents[2]

# Serve one prediction on LiteRT in a fresh interpreter, then list the heavy modules loaded.
LITERT_ONLY = """
import asyncio, json, sys
import httpx
from asgi_lifespan import LifespanManager
from app.core.config import Settings
from app.main import create_app

async def main() -> None:
    app = create_app(Settings(model_dir=sys.argv[1], runtime="litert", poll_interval_s=0))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            image = open(sys.argv[2], "rb").read()
            response = await client.post("/predict", files={"file": ("a.jpg", image)})
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "tf_keras"})
    print(json.dumps({"status": response.status_code, "body": response.json(), "heavy": heavy}))

asyncio.run(main())
"""


def test_litert_serves_without_importing_tensorflow(tiny_model_base: Path, tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(good_image())
    done = subprocess.run(
        [sys.executable, "-c", LITERT_ONLY, str(tiny_model_base), str(photo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result
    assert result["body"]["label"] in ("cat", "dog")
    assert result["heavy"] == []


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
async def test_the_model_endpoint_and_metrics_name_the_runtime(
    tiny_model_base: Path, runtime: str
) -> None:
    async with serve(settings_for(tiny_model_base, runtime=runtime)) as (_, client):
        info = await client.get("/v1/models/catdog")
        assert info.status_code == 200, info.text
        assert info.json()["runtime"] == runtime
        assert (await client.post("/predict", files=upload(good_image()))).status_code == 200
        text = await metrics_text(client)
        assert value(text, "catdog_model_version", version="1", runtime=runtime) == 1


async def test_auto_serves_litert_when_the_version_has_it(tiny_model_base: Path) -> None:
    async with serve(settings_for(tiny_model_base)) as (app, _):
        assert app.state.service.model.runtime_name == "litert"


async def test_auto_serves_tensorflow_without_a_litert_file(
    tiny_model_base: Path, tmp_path: Path
) -> None:
    base = Path(shutil.copytree(tiny_model_base, tmp_path / "catdog"))
    (base / "1" / "model.tflite").unlink()
    async with serve(settings_for(base)) as (app, client):
        assert app.state.service.model.runtime_name == "tensorflow"
        assert (await client.post("/predict", files=upload(good_image()))).status_code == 200


async def test_litert_refuses_a_version_without_its_file(
    tiny_model_base: Path, tmp_path: Path
) -> None:
    base = Path(shutil.copytree(tiny_model_base, tmp_path / "catdog"))
    (base / "1" / "model.tflite").unlink()
    with pytest.raises(RuntimeError, match="no model.tflite"):
        async with serve(settings_for(base, runtime="litert")):
            pass


async def test_a_hot_swap_to_a_version_without_litert_is_refused(
    tiny_model_base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = Path(shutil.copytree(tiny_model_base, tmp_path / "catdog"))
    async with serve(settings_for(base, runtime="litert")) as (app, client):
        shutil.copytree(base / "1", base / "2")
        (base / "2" / "model.tflite").unlink()
        assert await app.state.service.registry.check_for_update() is False
        assert app.state.service.model.version == "1"
        assert "refused model version 2" in caplog.text and "model.tflite" in caplog.text
        text = await metrics_text(client)
        assert value(text, "catdog_model_loads_total", result="refused") == 1
        metadata = json.loads((base / "1" / "metadata.json").read_text())
        assert "litert" in metadata["runtimes"]
