"""Bad uploads get a clear status and JSON ``detail``, and the service keeps serving."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from servicekit import value
from tests import images
from tests.app.helpers import (
    HTML,
    PDF,
    SVG,
    Served,
    batch_upload,
    bomb_png_bytes,
    error_json,
    good_image,
    jpeg_with_corrupt_body,
    metrics_text,
    multipart_chunks,
    png_with_corrupt_pixels,
    png_with_garbage_chunks,
    serve,
    settings_for,
    upload,
)
from tests.catdog import crafted

MAX_UPLOAD = 50_000
MAX_FILES = 4


@pytest_asyncio.fixture(scope="module")
async def served(tiny_model_base: Path) -> AsyncIterator[Served]:
    """This module's app: small upload and batch limits, default pixel limit."""
    settings = settings_for(
        tiny_model_base, max_upload_bytes=MAX_UPLOAD, max_files_per_request=MAX_FILES
    )
    async with serve(settings) as started:
        yield started


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    """A good request right after a bad one is answered normally."""
    response = await client.post("/predict", files=upload(good_image()))
    assert response.status_code == 200, response.text
    assert response.json()["label"] in ("cat", "dog")


def assert_detail(response: httpx.Response, status: int) -> str:
    """The status is ``status`` and the JSON body is ``{"detail": <text>}`` (with the
    request id); return the text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = error_json(response)
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


async def test_missing_file_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files={"image": ("cat.jpg", good_image())})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"] == ["body", "file"] for error in detail)
    await assert_still_serving(client)


async def test_no_body_at_all(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict")
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    await assert_still_serving(client)


async def test_empty_file(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files=upload(b"", name="empty.jpg"))
    detail = assert_detail(response, 400)
    assert "empty.jpg" in detail and "empty" in detail
    await assert_still_serving(client)


BAD_UPLOADS: dict[str, tuple[Callable[[], bytes], int]] = {
    "text": (images.text_bytes, 415),
    "html": (lambda: HTML, 415),
    "pdf": (lambda: PDF, 415),
    "svg": (lambda: SVG, 415),
    "random-bytes": (lambda: os.urandom(4096), 415),
    "truncated-jpeg": (images.truncated_jpeg_bytes, 422),
    "truncated-png": (lambda: images.encode(images.noisy((64, 64)), "PNG")[:400], 422),
    "png-with-corrupt-pixels": (png_with_corrupt_pixels, 422),
    "jpeg-header-then-garbage": (jpeg_with_corrupt_body, 422),
    "png-header-then-garbage": (png_with_garbage_chunks, 422),
    # Formats outside the allow-list: refused before any of Pillow's code for them runs.
    "dds-unknown-pixel-format": (images.dds_unknown_format_bytes, 415),  # was a 500, then 422
    "eps-looping": (lambda: crafted.LOOPING_EPS, 415),  # Ghostscript would spin on it
    "tiff": (images.tiff_bytes, 415),
    "psd": (crafted.psd_bytes, 415),
    "ico-embedding-png": (lambda: crafted.ico_embedding(crafted.solid_png(1200)), 415),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
async def test_bad_upload(client: httpx.AsyncClient, kind: str) -> None:
    make, status = BAD_UPLOADS[kind]
    response = await client.post("/predict", files=upload(make(), name=f"upload.{kind}"))
    assert_detail(response, status)
    await assert_still_serving(client)


async def test_an_unaccepted_format_is_named_with_the_accepted_ones(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/predict", files=upload(crafted.LOOPING_EPS, "loop.eps"))
    detail = assert_detail(response, 415)
    assert "unsupported image format EPS; accepted: " in detail and "JPEG" in detail
    await assert_still_serving(client)


async def test_photo_with_a_mistyped_exif_tag_is_classified(client: httpx.AsyncClient) -> None:
    # Turning it upright used to rewrite its EXIF, which raised struct.error: a 500.
    data = images.exif_mistyped_tag_jpeg_bytes(images.quadrants((64, 32)), 6)
    response = await client.post("/predict", files=upload(data, "phone.jpg"))
    assert response.status_code == 200, response.text
    assert response.json()["label"] in ("cat", "dog")


async def test_a_fault_of_the_service_is_a_json_500_and_it_keeps_serving(served: Served) -> None:
    model = served.app.state.service.model

    def broken(images: object) -> object:
        raise RuntimeError("out of memory in the model")

    transport = httpx.ASGITransport(app=served.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        model.infer_rows = broken  # type: ignore[method-assign]
        try:
            response = await client.post("/predict", files=upload(good_image()))
        finally:
            del model.infer_rows  # the class's method again
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        assert error_json(response) == {"detail": "internal error (RuntimeError)"}
        await assert_still_serving(client)
        text = await metrics_text(client)
        assert value(text, "catdog_images_in_flight") == 0


async def test_bad_file_in_a_batch_is_named(client: httpx.AsyncClient) -> None:
    files = batch_upload([good_image(1), images.text_bytes(), good_image(2)])
    detail = assert_detail(await client.post("/predict/batch", files=files), 415)
    assert "file 1" in detail and "image1.img" in detail
    await assert_still_serving(client)


async def test_file_over_upload_limit(client: httpx.AsyncClient) -> None:
    """Over max_upload_bytes, though the whole body is within the request limit."""
    data = os.urandom(MAX_UPLOAD + 1)
    detail = assert_detail(await client.post("/predict", files=upload(data, "big.jpg")), 413)
    assert str(MAX_UPLOAD) in detail
    await assert_still_serving(client)


async def test_body_over_limit_by_content_length(client: httpx.AsyncClient) -> None:
    data = os.urandom(4 * MAX_UPLOAD + 100_000)
    response = await client.post("/predict", files=upload(data, "huge.jpg"))
    assert "content-length" in response.request.headers
    assert "exceeds the limit" in assert_detail(response, 413)
    await assert_still_serving(client)


async def test_chunked_body_over_limit_is_cut_off_while_streaming(
    client: httpx.AsyncClient,
) -> None:
    """No Content-Length: the limit is enforced on the bytes received so far."""
    boundary = "catdog-test-boundary"
    total_file_bytes = 2_000_000
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for piece in multipart_chunks(boundary, "file", "stream.jpg", total_file_bytes):
            sent.append(len(piece))
            yield piece

    response = await client.post(
        "/predict",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    # The file part passes its own limit before the body passes the body limit.
    assert "exceeds the upload limit" in assert_detail(response, 413)
    # The server stopped reading long before the end of the body.
    assert sum(sent) < total_file_bytes / 2
    await assert_still_serving(client)


async def test_chunked_body_within_limit_is_served(client: httpx.AsyncClient) -> None:
    """The hand-built multipart body above is well formed: a small one is classified."""
    boundary = "catdog-test-boundary"
    data = good_image(5)

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="small.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        yield data
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(
        "/predict",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text


async def test_decompression_bomb_is_refused(client: httpx.AsyncClient) -> None:
    """20000 x 20000 pixels in a ~50 kB PNG: refused from the header, under default limits."""
    bomb = bomb_png_bytes()
    assert len(bomb) < MAX_UPLOAD
    detail = assert_detail(await client.post("/predict", files=upload(bomb, "bomb.png")), 413)
    assert "pixels" in detail
    await assert_still_serving(client)


async def test_too_many_files_in_a_batch(client: httpx.AsyncClient) -> None:
    files = batch_upload([good_image(i) for i in range(MAX_FILES + 1)])
    detail = assert_detail(await client.post("/predict/batch", files=files), 413)
    assert str(MAX_FILES) in detail
    response = await client.post(
        "/predict/batch", files=batch_upload([good_image(i) for i in range(MAX_FILES)])
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == MAX_FILES


async def test_errors_are_counted_by_route_and_status(client: httpx.AsyncClient) -> None:
    """Its own 415 and 413s, counted as differences: other tests share this module's app."""

    def count(text: str, status: str) -> float:
        return value(text, "catdog_requests_total", route="/predict", status=status)

    before = await metrics_text(client)
    response = await client.post("/predict", files=upload(images.text_bytes()))
    assert response.status_code == 415
    # one 413 from the route (the file part), one from the body-limit middleware, which
    # answers before routing and still labels it with the route
    over_file = upload(os.urandom(MAX_UPLOAD + 1), "big.jpg")
    over_body = upload(os.urandom(4 * MAX_UPLOAD + 100_000), "huge.jpg")
    for files in (over_file, over_body):
        assert (await client.post("/predict", files=files)).status_code == 413
    after = await metrics_text(client)
    assert count(after, "415") - count(before, "415") == 1
    assert count(after, "413") - count(before, "413") == 2
    assert value(after, "catdog_images_in_flight") == 0


async def test_a_batch_over_the_file_limit_is_413(
    tiny_model_base: Path,
) -> None:
    settings = settings_for(tiny_model_base, max_images_in_flight=4, max_files_per_request=2)
    async with serve(settings) as (_, client):
        files = batch_upload([good_image(i) for i in range(3)])
        detail = assert_detail(await client.post("/predict/batch", files=files), 413)
        assert "at most 2" in detail
        response = await client.post("/predict/batch", files=batch_upload([good_image(1)] * 2))
        assert response.status_code == 200, response.text


async def test_oversized_file_in_a_batch_is_named(client: httpx.AsyncClient) -> None:
    files = batch_upload([good_image(1), os.urandom(MAX_UPLOAD + 1)])
    detail = assert_detail(await client.post("/predict/batch", files=files), 413)
    assert "image1.img" in detail and str(MAX_UPLOAD) in detail
    await assert_still_serving(client)


async def test_more_pixels_than_the_limit(tiny_model_base: Path) -> None:
    async with serve(settings_for(tiny_model_base, max_pixels=10_000)) as (_, client):
        data = images.encode(images.noisy((200, 200)), "PNG")
        detail = assert_detail(await client.post("/predict", files=upload(data, "big.png")), 413)
        assert "200x200" in detail and "10000" in detail
        await assert_still_serving(client)  # 32 x 32 is within the limit
        small = images.encode(images.noisy((100, 100)), "PNG")  # exactly at the limit
        response = await client.post("/predict", files=upload(small, "ok.png"))
        assert response.status_code == 200, response.text
