"""Load shedding (503 + Retry-After when the queue is full) and dynamic batching."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from servicekit import samples, value
from tests import images
from tests.app.helpers import (
    batch_upload,
    good_image,
    metrics_text,
    serve,
    settings_for,
    upload,
)


async def test_queue_full_is_503_with_retry_after(tiny_model_base: Path) -> None:
    """Deterministic: with two of three places taken, two more images do not fit."""
    settings = settings_for(
        tiny_model_base, max_images_in_flight=3, max_files_per_request=3, retry_after_s=7
    )
    async with serve(settings) as (app, client):
        files = batch_upload([good_image(i) for i in range(2)])
        with app.state.service.admission.admit(2):  # as if a request of two were in flight
            response = await client.post("/predict/batch", files=files)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "7"
        detail = response.json()["detail"]
        assert "busy" in detail and "limit 3" in detail

        # Room again, and the refused request did not keep any reserved.
        response = await client.post("/predict/batch", files=files)
        assert response.status_code == 200, response.text
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text
        text = await metrics_text(client)
        assert value(text, "catdog_rejected_total") == 1
        assert value(text, "catdog_requests_total", route="/predict/batch", status="503") == 1
        assert value(text, "catdog_images_in_flight") == 0


async def test_full_queue_refuses_before_reading_the_upload(tiny_model_base: Path) -> None:
    """With no room left, even a text upload gets 503 rather than 415: it is never parsed."""
    settings = settings_for(
        tiny_model_base, max_images_in_flight=1, max_files_per_request=1, retry_after_s=3
    )
    async with serve(settings) as (app, client):
        with app.state.service.admission.admit(1):
            response = await client.post("/predict", files=upload(b"plain text, not an image"))
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "3"
            assert "busy" in response.json()["detail"]
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text
        text = await metrics_text(client)
        assert value(text, "catdog_rejected_total") == 1
        assert value(text, "catdog_requests_total", route="/predict", status="503") == 1


async def test_burst_gets_only_200_or_503(tiny_model_base: Path) -> None:
    settings = settings_for(tiny_model_base, max_images_in_flight=4, max_files_per_request=4)
    photo = images.jpeg_bytes(image=images.noisy((640, 480), seed=3))
    async with serve(settings) as (_, client):
        responses = await asyncio.gather(
            *(client.post("/predict", files=upload(photo)) for _ in range(40))
        )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert "busy" in response.json()["detail"]
            else:
                assert response.json()["model_version"] == "1"
        # Every admitted image was released: the service is not stuck at "full".
        text = await metrics_text(client)
        assert value(text, "catdog_images_in_flight") == 0
        assert value(text, "catdog_rejected_total") == statuses[503]
        response = await client.post("/predict", files=upload(photo))
        assert response.status_code == 200, response.text


async def _burst_batch_sizes(
    tiny_model_base: Path, max_batch_size: int
) -> tuple[float, float, float]:
    """Send 16 concurrent requests; return (sum, count, count of batches of size 1)."""
    settings = settings_for(tiny_model_base, max_batch_size=max_batch_size, batch_timeout_ms=50)
    async with serve(settings) as (_, client):
        responses = await asyncio.gather(
            *(client.post("/predict", files=upload(good_image(i))) for i in range(16))
        )
        assert [r.status_code for r in responses] == [200] * 16
        text = await metrics_text(client)
    total = value(text, "catdog_batch_size_sum")
    count = value(text, "catdog_batch_size_count")
    [ones] = samples(text, "catdog_batch_size_bucket", le="1.0")
    return total, count, ones


async def test_concurrent_requests_share_batches(tiny_model_base: Path) -> None:
    total, count, ones = await _burst_batch_sizes(tiny_model_base, max_batch_size=8)
    assert total == 16  # every image went through the model exactly once
    assert total / count > 1, f"{count} model calls for 16 images: no batching"
    assert count < 16 and ones < count


async def test_max_batch_size_one_turns_batching_off(tiny_model_base: Path) -> None:
    total, count, ones = await _burst_batch_sizes(tiny_model_base, max_batch_size=1)
    assert total == 16
    assert count == 16
    assert ones == 16


async def test_batched_answers_match_single_answers(tiny_model_base: Path) -> None:
    """Grouping requests into one model call does not mix up their answers."""
    uploads = [images.pet_jpeg_bytes(("cat", "dog")[i % 2], seed=100 + i) for i in range(12)]
    async with serve(settings_for(tiny_model_base, batch_timeout_ms=50)) as (_, client):
        singles = []
        for data in uploads:
            response = await client.post("/predict", files=upload(data))
            assert response.status_code == 200, response.text
            singles.append(response.json())
        responses = await asyncio.gather(
            *(client.post("/predict", files=upload(data)) for data in uploads)
        )
        text = await metrics_text(client)
    assert value(text, "catdog_batch_size_sum") / value(text, "catdog_batch_size_count") > 1
    for single, response in zip(singles, responses):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["label"] == single["label"]
        assert abs(answer["probabilities"]["cat"] - single["probabilities"]["cat"]) < 1e-6


async def test_a_batch_waits_for_an_upload_still_arriving(tiny_model_base: Path) -> None:
    """The middleware counts a prediction from its first byte, so the batch waits for it."""
    boundary = "catdog-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + good_image(1)
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def trickle() -> AsyncIterator[bytes]:
        yield body[:40]
        await asyncio.sleep(0.3)  # the rest of the upload is still on the wire
        yield body[40:]

    settings = settings_for(tiny_model_base, batch_timeout_ms=2000)
    async with serve(settings) as (_, client):
        slow = asyncio.create_task(
            client.post(
                "/predict",
                content=trickle(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        )
        await asyncio.sleep(0.1)  # its first bytes are in
        fast = await client.post("/predict", files=upload(good_image(2)))
        assert fast.status_code == 200, fast.text
        assert (await slow).status_code == 200
        text = await metrics_text(client)
    # One model call for both; without the count the first would have run alone.
    assert value(text, "catdog_batch_size_count") == 1
    assert value(text, "catdog_batch_size_sum") == 2


async def test_images_in_flight_counts_a_request_being_answered(tiny_model_base: Path) -> None:
    """The gauge the autoscaler scales on reads the images of a request still being
    answered (three large photos decoding), and 0 once it is answered."""
    settings = settings_for(tiny_model_base, max_images_in_flight=4, max_files_per_request=4)
    photos = [images.jpeg_bytes(image=images.noisy((3000, 2000), seed=i)) for i in range(3)]
    async with serve(settings) as (_, client):
        request = asyncio.ensure_future(client.post("/predict/batch", files=batch_upload(photos)))
        seen: list[float] = []
        while not request.done():
            seen.append(value(await metrics_text(client), "catdog_images_in_flight"))
            await asyncio.sleep(0.005)  # the request runs on this loop too
        assert (await request).status_code == 200
        assert max(seen) == 3, seen
        assert value(await metrics_text(client), "catdog_images_in_flight") == 0
