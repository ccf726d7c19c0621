"""A naive tutorial model server, the baseline ``bench.int8_serve`` measures the service against.

What a getting-started guide writes: FastAPI, the SavedModel loaded with
TensorFlow at import, and an ``async`` endpoint that reads the upload, decodes
it with Pillow, resizes it to the model's input and calls the model, one image
per call, on the event loop. No batching, no thread pool, no limits.

    CATDOG_NAIVE_MODEL=models/catdog/5 .venv/bin/python -m uvicorn bench.naive_server:app
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, UploadFile
from fastapi.responses import PlainTextResponse
from PIL import Image

MODEL = Path(os.environ.get("CATDOG_NAIVE_MODEL", "models/catdog/5"))
metadata = json.loads((MODEL / "metadata.json").read_text())
CLASSES = metadata["class_names"]
HEIGHT, WIDTH = metadata["image_size"]
model = tf.saved_model.load(str(MODEL))
infer = model.signatures["serving_default"]
app = FastAPI()


@app.get("/readyz")
async def ready() -> dict[str, str]:
    """Ready once the module has loaded the model."""
    return {"status": "ok"}


calls = 0  # model calls so far, each of one image


@app.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> str:
    """The batch-size counters the load generator reads: every call is one image."""
    return f"catdog_batch_size_sum {calls}\ncatdog_batch_size_count {calls}\n"


@app.post("/predict")
async def predict(file: UploadFile) -> dict[str, Any]:
    """Label and probabilities of one uploaded image."""
    image = Image.open(io.BytesIO(await file.read())).convert("RGB").resize((WIDTH, HEIGHT))
    pixels = np.asarray(image, np.float32)[None] / 255.0
    probabilities = infer(tf.constant(pixels))["probabilities"].numpy()[0]
    global calls
    calls += 1
    return {
        "label": CLASSES[int(np.argmax(probabilities))],
        "probabilities": dict(zip(CLASSES, probabilities.tolist())),
    }
