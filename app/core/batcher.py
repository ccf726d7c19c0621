"""Dynamic batching: concurrent requests share one model call.

Requests are admitted up to ``max_queue`` images in flight (decoding or waiting
for the model); past that, ``QueueFullError`` (503). Each image waits in an
asyncio queue; one worker takes up to ``max_batch_size`` of them and runs the
model in a dedicated thread, so the event loop never blocks.

How long the worker waits for a batch to fill: only while more images are on
their way (a lone request is never held back), and then for up to the longer of
``batch_timeout_ms`` and the duration of the previous model call, capped at
``max_batch_wait_ms``. Waiting about one model call at most doubles the model
time of the requests already queued, and on a busy CPU it hands the cores to the
decoders, so batches grow towards ``max_batch_size`` instead of settling at a few
images per call with the model and the decoders taking turns.

"On their way" counts admitted images still decoding and prediction requests
whose upload is still being read: the middleware announces each request with
``expect()`` from its first byte, and ``admit()`` takes it over. Without the
second count a batch was often cut while a few uploads of the same wave were
still arriving, and those requests waited a whole extra model call. An upload
counts for at most ``ARRIVAL_WINDOW_S`` (1 s), so a slow or stalled client
cannot keep every batch waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.errors import ModelNotReadyError, QueueFullError
from app.core.metrics import Metrics

log = logging.getLogger("catdog.batcher")


@dataclass
class Ticket:
    """Room reserved by one request: how many of its images are not yet queued."""

    unsubmitted: int


ARRIVAL_WINDOW_S = 1.0  # an upload still arriving after this long is not waited for


@dataclass(eq=False)
class _Arrival:
    """A prediction request counted as on its way until it is admitted or ends."""

    started: float = field(default_factory=time.perf_counter)


_ARRIVAL: ContextVar[_Arrival | None] = ContextVar("catdog_arrival", default=None)


@dataclass
class _Item:
    model: Any
    image: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def _stack_and_infer(model: Any, images: list[np.ndarray]) -> np.ndarray:
    """One model call; stacking (a ~19 MB copy for 32 images) stays off the event loop."""
    return model.infer(np.stack(images))


class Batcher:
    """Groups single-image inference calls into batches (see the module docstring)."""

    def __init__(
        self,
        max_batch_size: int,
        batch_timeout_ms: float,
        max_queue: int,
        metrics: Metrics,
        max_batch_wait_ms: float = 0.0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_ms / 1000.0
        self.max_wait = max_batch_wait_ms / 1000.0
        self.last_call = 0.0  # seconds taken by the previous model call
        self.max_queue = max_queue
        self.metrics = metrics
        self.in_flight = 0  # admitted images not yet answered
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending = 0  # admitted images not yet in the queue (still decoding)
        self._arrivals: set[_Arrival] = set()  # prediction requests still being uploaded
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish the images in flight (up to ``timeout`` s), then stop the worker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():  # only after the timeout: fail, don't hang
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ModelNotReadyError("the service is stopping"))
        self._executor.shutdown(wait=True)

    def check_room(self, count: int = 1) -> None:
        """Raise ``QueueFullError`` (and count a rejection) if ``count`` more images don't fit."""
        if self.in_flight + count > self.max_queue:
            self.metrics.rejected.inc()
            raise QueueFullError(f"{self.in_flight} images in flight (limit {self.max_queue})")

    @property
    def on_the_way(self) -> int:
        """How many images the worker may wait for.

        Admitted images still decoding, plus requests whose upload began less than
        ``ARRIVAL_WINDOW_S`` ago: a client trickling its upload must not hold up batches.
        """
        since = time.perf_counter() - ARRIVAL_WINDOW_S
        return self._pending + sum(1 for a in self._arrivals if a.started > since)

    @contextlib.contextmanager
    def expect(self) -> Iterator[None]:
        """Count a prediction request as on its way from its first byte until ``admit``."""
        arrival = _Arrival()
        self._arrivals.add(arrival)
        token = _ARRIVAL.set(arrival)
        try:
            yield
        finally:
            _ARRIVAL.reset(token)
            self._arrived(arrival)

    def _arrived(self, arrival: _Arrival | None) -> None:
        if arrival is not None:
            self._arrivals.discard(arrival)

    @contextlib.contextmanager
    def admit(self, count: int = 1) -> Iterator[Ticket]:
        """Reserve room for ``count`` images for the duration of a request, or 503."""
        self._arrived(_ARRIVAL.get())
        self.check_room(count)
        ticket = Ticket(count)
        self.in_flight += count
        self._pending += count
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield ticket
        finally:
            self.in_flight -= count
            self._pending -= ticket.unsubmitted
            self.metrics.in_flight.set(self.in_flight)

    async def submit(self, ticket: Ticket, model: Any, image: np.ndarray) -> np.ndarray:
        """Queue one preprocessed image for ``model``; return its probabilities."""
        future = asyncio.get_running_loop().create_future()
        ticket.unsubmitted -= 1
        self._pending -= 1
        self._queue.put_nowait(_Item(model, image, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.perf_counter() + self.wait_limit()
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if self.on_the_way <= 0 or remaining <= 0:
                    break  # nothing else is on its way, or we waited long enough
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._infer([item for item in batch if not item.future.done()])

    def wait_limit(self) -> float:
        """Seconds the worker may wait for images on their way to join a batch."""
        return max(self.timeout, min(self.last_call, self.max_wait))

    async def _infer(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        for item in batch:
            self.metrics.queue_wait.observe(started - item.enqueued)
        # A version swap can leave two models in one batch: one call per model.
        groups: dict[int, list[_Item]] = {}
        for item in batch:
            groups.setdefault(id(item.model), []).append(item)
        loop = asyncio.get_running_loop()
        for items in groups.values():
            model = items[0].model
            images = [item.image for item in items]
            try:
                t0 = time.perf_counter()
                probabilities = await loop.run_in_executor(
                    self._executor, _stack_and_infer, model, images
                )
                self.last_call = time.perf_counter() - t0
                self.metrics.inference.observe(self.last_call)
                self.metrics.batch_size.observe(len(items))
            except Exception as exc:  # a model failure fails these requests, not the worker
                log.exception("inference failed for a batch of %d", len(items))
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, row in zip(items, probabilities):
                if not item.future.done():
                    item.future.set_result(row)
