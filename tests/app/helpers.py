"""Helpers of the service tests: in-process apps, uploads, /metrics, odd images.

A real uvicorn process and the Prometheus text parsing come from ``servicekit``,
shared with the benchmarks.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from PIL import Image

from app.core.config import Settings
from app.main import create_app
from tests import images

STARTUP_TIMEOUT = 180.0  # model load + warm-up on a busy 2-core machine
HTTP_TIMEOUT = 60.0

# ---------------------------------------------------------------- in-process apps


class Served(NamedTuple):
    """A started app and a client talking to it in-process."""

    app: FastAPI
    client: httpx.AsyncClient


def settings_for(model_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test app: ``model_dir``, no version polling unless asked for."""
    return Settings(**{"model_dir": model_dir, "poll_interval_s": 0, **overrides})


def make_app(settings: Settings) -> FastAPI:
    """A fresh app (its own metrics and state) using ``settings``."""
    return create_app(settings)


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process (no lifespan of its own)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", timeout=HTTP_TIMEOUT
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    """Start a fresh app with ``settings`` (lifespan included) and yield it with a client."""
    app = make_app(settings)
    async with (
        LifespanManager(app, startup_timeout=STARTUP_TIMEOUT, shutdown_timeout=60),
        client_for(app) as client,
    ):
        yield Served(app, client)


def upload(
    data: bytes, name: str = "image.jpg", content_type: str = "image/jpeg"
) -> dict[str, tuple[str, bytes, str]]:
    """The ``files=`` argument of one /predict upload."""
    return {"file": (name, data, content_type)}


def batch_upload(datas: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The ``files=`` argument of a /predict/batch upload, in order."""
    return [
        ("files", (f"image{i}.img", data, "application/octet-stream"))
        for i, data in enumerate(datas)
    ]


def good_image(seed: int = 0) -> bytes:
    """A small JPEG the service must accept."""
    return images.pet_jpeg_bytes("cat", (32, 32), seed)


# ---------------------------------------------------------------- metrics


async def metrics_text(client: httpx.AsyncClient) -> str:
    """GET /metrics (checking the status)."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


# ---------------------------------------------------------------- odd images


def gradient_jpeg_bytes(size: images.Size, quality: int = 85) -> bytes:
    """A smooth colour gradient JPEG (small file even at 12 megapixels)."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    red = np.broadcast_to(x, (height, width))
    green = np.broadcast_to(y, (height, width))
    pixels = np.stack([red, green, (red + green) / 2], axis=-1).astype(np.uint8)
    return images.jpeg_bytes(image=Image.fromarray(pixels, "RGB"), quality=quality)


def bomb_png_bytes(side: int = 20_000) -> bytes:
    """A real decompression bomb: a solid ``side`` x ``side`` 1-bit PNG, compressed tiny."""
    return images.encode(Image.new("1", (side, side), 0), "PNG")


def garbage(count: int, seed: int = 0) -> bytes:
    """Seeded random bytes that do not start with a JPEG marker byte."""
    data = np.random.default_rng(seed).integers(0, 255, count, dtype=np.uint8).tobytes()
    return b"\x00" + data[1:]


def png_with_garbage_chunks() -> bytes:
    """A valid PNG signature and IHDR chunk followed by random bytes (no chunk structure)."""
    data = images.encode(images.noisy((64, 64)), "PNG")
    return data[:33] + garbage(2000)  # 8 signature + 25 IHDR bytes


def png_with_corrupt_pixels() -> bytes:
    """A well-formed PNG (chunks, CRCs) whose compressed pixel data is random bytes."""
    data = images.encode(images.noisy((64, 64)), "PNG")
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    body = garbage(length)
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + body) & 0xFFFFFFFF)
    return data[: start + 8] + body + crc + data[start + 12 + length :]


def jpeg_with_corrupt_body() -> bytes:
    """A valid JPEG header (markers up to the scan) followed by random bytes."""
    data = images.jpeg_bytes(image=images.noisy((64, 64)))
    return data[: data.index(b"\xff\xda")] + garbage(2000)


PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n"
    b"%%EOF\n"
)
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
    b'<rect width="32" height="32" fill="red"/></svg>\n'
)
HTML = b"<!DOCTYPE html>\n<html><head><title>cat</title></head><body><img src=x></body></html>\n"


def multipart_chunks(
    boundary: str, field: str, filename: str, size: int, chunk: int = 16 * 1024
) -> Iterator[bytes]:
    """A one-file multipart/form-data body of ``size`` file bytes, in pieces."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    for start in range(0, size, chunk):
        yield b"\xab" * min(chunk, size - start)
    yield f"\r\n--{boundary}--\r\n".encode()


BOUNDARY = "catdog-hardening"  # of the raw multipart requests tests write by hand


def multipart_head(content_length: int, path: str = "/predict") -> bytes:
    """Request line and headers of a multipart POST."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def error_json(response: httpx.Response) -> dict[str, Any]:
    """An error answer's JSON body without the ``request_id`` every error carries (app/ops)."""
    body = response.json()
    assert body.pop("request_id", None) == response.headers.get("x-request-id")
    return body
