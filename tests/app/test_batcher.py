"""The batcher's wait policy, driven directly with a model that takes a known time."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest

from app.core import batcher as admission_module
from app.core.batcher import Admission, Batcher, Ticket
from app.core.metrics import Metrics


class SlowModel:
    """Returns one row per image after ``seconds``; records each call's batch size."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[int] = []

    def infer_rows(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        self.calls.append(len(images))
        return np.tile([0.25, 0.75], (len(images), 1))


def make(
    batch_timeout_ms: float = 1.0, max_batch_wait_ms: float = 100.0
) -> tuple[Batcher, Admission]:
    """A batcher of up to 8 images and the admission that tells it what is on its way."""
    metrics = Metrics()
    admission = Admission(64, metrics)
    batcher = Batcher(8, batch_timeout_ms, max_batch_wait_ms, metrics, admission.on_the_way)
    return batcher, admission


async def submit(
    batcher: Batcher, ticket: Ticket, model: SlowModel, image: np.ndarray
) -> np.ndarray:
    """What the service does with each decoded image: mark it queued, then submit it."""
    ticket.queued()
    return await batcher.submit(model, image)


async def _late_joiners(
    batcher: Batcher, admission: Admission, model: SlowModel, delay: float
) -> list[int]:
    """One request queued at once, two more admitted with it but queued ``delay`` s later."""
    image = np.zeros((4, 4, 3), np.float32)
    batcher.start()
    try:
        with admission.admit(1) as ticket:  # a first call sets how long one takes
            await submit(batcher, ticket, model, image)
        model.calls.clear()
        with admission.admit(3) as ticket:

            async def later() -> np.ndarray:
                await asyncio.sleep(delay)
                return await submit(batcher, ticket, model, image)

            rows = await asyncio.gather(submit(batcher, ticket, model, image), later(), later())
        assert all(row.tolist() == [0.25, 0.75] for row in rows)
    finally:
        await batcher.stop()
    return model.calls


async def test_waits_about_one_model_call_for_requests_still_decoding() -> None:
    model = SlowModel(0.4)
    batcher, admission = make(max_batch_wait_ms=1000)
    assert await _late_joiners(batcher, admission, model, delay=0.1) == [3]


async def test_wait_is_capped_by_max_batch_wait() -> None:
    model = SlowModel(0.4)
    batcher, admission = make(max_batch_wait_ms=0)
    assert await _late_joiners(batcher, admission, model, delay=0.1) == [1, 2]


async def test_a_lone_request_is_not_held_back() -> None:
    """The worker may wait an hour for images on their way; with none on its way, a lone
    request is answered at once (an hour's wait would time out here, whatever the load)."""
    model = SlowModel(0.0)
    batcher, admission = make(max_batch_wait_ms=3_600_000)
    batcher.last_call = 3600.0  # as if the previous model call had taken an hour
    assert batcher.wait_limit() == 3600.0
    image = np.zeros((4, 4, 3), np.float32)
    batcher.start()
    try:
        with admission.admit(1) as ticket:
            row = await asyncio.wait_for(submit(batcher, ticket, model, image), timeout=120)
        assert row.tolist() == [0.25, 0.75] and model.calls == [1]
    finally:
        await batcher.stop()


async def _one_ready_one_uploading(announced: bool) -> list[int]:
    """Two requests: one queued at once, one whose upload takes 0.2 s more to arrive.

    ``announced``: the slow one is counted from its first byte (``uploading``), as the
    service's middleware does for every prediction request.
    """
    model = SlowModel(0.05)
    batcher, admission = make(batch_timeout_ms=1000.0, max_batch_wait_ms=1000)
    image = np.zeros((4, 4, 3), np.float32)
    batcher.start()
    try:

        async def ready() -> np.ndarray:
            with admission.admit(1) as ticket:
                return await submit(batcher, ticket, model, image)

        async def uploading() -> np.ndarray:
            with admission.uploading() if announced else contextlib.nullcontext() as upload:
                await asyncio.sleep(0.2)  # the rest of the body is still on the wire
                with admission.admit(1, upload) as ticket:
                    return await submit(batcher, ticket, model, image)

        await asyncio.gather(uploading(), ready())
        assert admission.on_the_way() == 0
    finally:
        await batcher.stop()
    return model.calls


async def test_a_batch_waits_for_a_request_still_uploading() -> None:
    assert await _one_ready_one_uploading(announced=True) == [2]


async def test_an_unannounced_upload_is_not_waited_for() -> None:
    # The same two requests without the arrival count: nothing is "on its way" when
    # the first is queued, so it runs alone even though the timeout is a second.
    assert await _one_ready_one_uploading(announced=False) == [1, 1]


async def test_a_request_that_fails_before_admission_stops_counting() -> None:
    admission = Admission(64, Metrics())
    with pytest.raises(ValueError), admission.uploading():
        assert admission.on_the_way() == 1
        raise ValueError("413: the upload was too large")
    assert admission.on_the_way() == 0
    with admission.uploading() as upload:
        with admission.admit(2, upload):  # admitted: its images are on their way, not the upload
            assert admission.on_the_way() == 2
        assert admission.on_the_way() == 0
    assert admission.on_the_way() == 0


async def test_a_stalled_upload_stops_counting_after_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission_module, "UPLOAD_WINDOW_S", 0.2)
    admission = Admission(64, Metrics())
    with admission.uploading():
        assert admission.on_the_way() == 1
        await asyncio.sleep(0.3)  # the client has stopped sending
        assert admission.on_the_way() == 0
    assert admission.on_the_way() == 0


async def test_a_lone_image_is_decoded_and_run_in_the_model_thread() -> None:
    model = SlowModel(0.0)
    batcher, _ = make()
    threads: list[str] = []

    def decode() -> np.ndarray:
        threads.append(threading.current_thread().name)
        return np.zeros((4, 4, 3), np.float32)

    def refuse() -> np.ndarray:
        raise ValueError("not an image")

    batcher.start()
    try:
        row = await batcher.run_alone(model, decode)
        with pytest.raises(ValueError, match="not an image"):  # as raised, nothing run
            await batcher.run_alone(model, refuse)
        seen: list[str] = []
        await batcher.in_model_thread(lambda: seen.append(threading.current_thread().name))
    finally:
        await batcher.stop()
    assert row.tolist() == [0.25, 0.75]
    assert model.calls == [1]
    assert threads == seen  # the model thread decoded it
    counted = batcher.metrics.registry.get_sample_value("catdog_batch_size_count")
    assert counted == 1  # the model call, as one batch of one
