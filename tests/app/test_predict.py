"""POST /predict and /predict/batch: the answer's schema, upload order, every common format."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import images
from tests.app.helpers import batch_upload, gradient_jpeg_bytes, upload

CLASS_NAMES = ["cat", "dog"]


def check_prediction(body: dict) -> None:
    """The fields and invariants of one ``Prediction``."""
    fields = {"label", "class_index", "probabilities", "model_version", "known", "ood_score"}
    assert set(body) == fields
    assert body["known"] is None and body["ood_score"] is None  # the tiny model has no OOD output
    probabilities = body["probabilities"]
    assert list(probabilities) == CLASS_NAMES
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert abs(sum(probabilities.values()) - 1.0) <= 1e-9
    index = int(np.argmax([probabilities[name] for name in CLASS_NAMES]))
    assert body["class_index"] == index
    assert body["label"] == CLASS_NAMES[index]
    assert body["model_version"] == "1"


async def test_predict_schema(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files=upload(images.pet_jpeg_bytes("cat")))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    check_prediction(response.json())


async def test_model_tells_cats_from_dogs(client: httpx.AsyncClient) -> None:
    """The served model is the trained one: reddish is a cat, bluish a dog."""
    for label in CLASS_NAMES:
        response = await client.post("/predict", files=upload(images.pet_jpeg_bytes(label, seed=7)))
        assert response.status_code == 200, response.text
        assert response.json()["label"] == label


async def test_batch_keeps_upload_order(client: httpx.AsyncClient) -> None:
    uploads = [
        images.pet_jpeg_bytes("cat", (40, 30), seed=1),
        images.pet_jpeg_bytes("dog", (32, 32), seed=2),
        images.encode(images.halves((64, 32)), "PNG"),
        images.pet_jpeg_bytes("dog", (50, 20), seed=3),
        images.webp_bytes(color=(120, 50, 120)),
    ]
    singles = []
    for data in uploads:
        response = await client.post("/predict", files=upload(data))
        assert response.status_code == 200, response.text
        singles.append(response.json())
    # The check below is only meaningful if the images get different answers.
    assert len({round(s["probabilities"]["cat"], 6) for s in singles}) == len(uploads)
    assert {s["label"] for s in singles} == set(CLASS_NAMES)

    response = await client.post("/predict/batch", files=batch_upload(uploads))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions"}
    predictions = body["predictions"]
    assert len(predictions) == len(uploads)
    for single, batched in zip(singles, predictions):
        check_prediction(batched)
        assert batched["label"] == single["label"]
        assert batched["class_index"] == single["class_index"]
        for name in CLASS_NAMES:
            assert batched["probabilities"][name] == pytest.approx(
                single["probabilities"][name], abs=1e-6
            )


def _exif_rotated() -> bytes:
    return images.exif_rotated_jpeg_bytes(images.halves((48, 32)), orientation=6)


# kind: (the file, what it is: format, size, mode and what sets it apart)
FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "jpeg-baseline": (lambda: images.jpeg_bytes((64, 48)), "JPEG 64x48 RGB"),
    "jpeg-progressive": (
        lambda: images.jpeg_bytes((64, 48), progressive=True),
        "JPEG 64x48 RGB progressive",
    ),
    "jpeg-cmyk": (images.jpeg_cmyk_bytes, "JPEG 32x32 CMYK"),
    "jpeg-grayscale": (images.jpeg_grayscale_bytes, "JPEG 32x32 L"),
    "png-rgba": (lambda: images.png_rgba_bytes(alpha=128), "PNG 32x32 RGBA"),
    "png-palette": (images.png_palette_bytes, "PNG 32x32 P"),
    "png-palette-transparent": (
        lambda: images.png_palette_bytes(transparent=True),
        "PNG 32x32 P transparent",
    ),
    "png-16bit": (images.png_16bit_bytes, "PNG 32x32 I;16"),
    "gif": (images.gif_bytes, "GIF 32x32 P"),
    "gif-animated": (
        lambda: images.gif_bytes(colors=(images.RED, images.BLUE, images.RED)),
        "GIF 32x32 P 3 frames",
    ),
    "webp": (images.webp_bytes, "WEBP 32x32 RGB"),
    "webp-lossy": (lambda: images.webp_bytes(lossless=False), "WEBP 32x32 RGB"),
    "bmp": (images.bmp_bytes, "BMP 32x32 RGB"),
    "jpeg-exif-rotated": (_exif_rotated, "JPEG 32x48 RGB orientation 6"),
    "jpeg-12-megapixel": (lambda: gradient_jpeg_bytes((4000, 3000)), "JPEG 4000x3000 RGB"),
    "png-1x1": (lambda: images.encode(images.solid((1, 1)), "PNG"), "PNG 1x1 RGB"),
    "jpeg-1x1": (lambda: images.jpeg_bytes((1, 1)), "JPEG 1x1 RGB"),
    "png-2000x10": (lambda: images.encode(images.noisy((2000, 10)), "PNG"), "PNG 2000x10 RGB"),
    "jpeg-10x2000": (
        lambda: images.jpeg_bytes(image=images.noisy((10, 2000))),
        "JPEG 10x2000 RGB",
    ),
}
UPLOADS: dict[str, Callable[[], bytes]] = {kind: make for kind, (make, _) in FILES.items()}


def describe(data: bytes) -> str:
    """What a file is, as Pillow reads it: ``FORMAT WxH MODE`` and what sets it apart."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        words = [image.format, f"{image.width}x{image.height}", image.mode]
        if image.info.get("progressive") or image.info.get("progression"):
            words.append("progressive")
        if "transparency" in image.info:
            words.append("transparent")
        if getattr(image, "n_frames", 1) > 1:
            words.append(f"{image.n_frames} frames")
        if orientation := image.getexif().get(0x0112):
            words.append(f"orientation {orientation}")
    return " ".join(str(w) for w in words)


@pytest.mark.parametrize("kind", list(FILES))
async def test_common_uploads_are_accepted(client: httpx.AsyncClient, kind: str) -> None:
    make, what = FILES[kind]
    data = make()
    assert describe(data) == what  # the file really is what its kind says
    response = await client.post(
        "/predict",
        files=upload(data, name=f"upload.{kind}", content_type="application/octet-stream"),
    )
    assert response.status_code == 200, f"{kind}: {response.text}"
    check_prediction(response.json())


async def test_batch_accepts_mixed_formats(client: httpx.AsyncClient) -> None:
    kinds = ["jpeg-cmyk", "png-16bit", "gif-animated", "bmp", "jpeg-exif-rotated"]
    response = await client.post(
        "/predict/batch", files=batch_upload([UPLOADS[k]() for k in kinds])
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(kinds)
    for prediction in predictions:
        check_prediction(prediction)
