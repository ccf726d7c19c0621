"""Serving the shipped model on LiteRT imports neither TensorFlow, Keras nor matplotlib.

``make serve`` installs only the ``serve`` extra (no TensorFlow), so any import of
them on that path would fail on a fresh clone. A separate interpreter starts the app
the way ``python -m app`` does (default settings but the model folder), answers one
``/predict`` and lists which of those packages it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "tests" / "fixtures" / "photos" / "cat.3040.jpg"

_PROBE = """
import asyncio, json, sys
import httpx
from app.core.config import Settings
from app.main import create_app

async def main():
    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            photo = open(sys.argv[1], "rb").read()
            answer = await client.post("/predict", files={"file": ("cat.jpg", photo)})
    heavy = sorted(
        {m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "matplotlib"}
    )
    print(json.dumps({"status": answer.status_code, "body": answer.json(), "heavy": heavy}))

asyncio.run(main())
"""


def test_litert_serving_imports_no_tensorflow() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}
    env["CATDOG_MODEL_DIR"] = str(ROOT / "models" / "catdog")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(PHOTO)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["body"]["label"] == "cat", result
    assert result["heavy"] == [], f"the LiteRT path imported {result['heavy']}"
