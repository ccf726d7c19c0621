"""Images in flight, and dynamic batching: concurrent requests share one model call.

``Admission`` counts images *in flight* (admitted, not yet answered) in all and per
client address, prediction bodies held in memory, and uploads still arriving; past a
bound, ``QueueFullError`` (503). The gate (``app.core.gate.admitted``) and the service
(``admit``) ask it.

Each preprocessed image waits in an asyncio queue; one worker takes up to
``max_batch_size`` of them and runs the model in a dedicated thread, so the event
loop never blocks.

How long the worker waits for a batch to fill: only while more images are on
their way (``on_the_way()``, from ``Admission``; a lone request is never held
back), and then for up to the longer of ``batch_timeout_ms`` and the duration of
the previous model call, capped at ``max_batch_wait_ms``. Waiting about one model
call at most doubles the model time of the requests already queued, and on a busy
CPU it hands the cores to the decoders, so batches grow towards
``max_batch_size`` instead of settling at a few images per call with the model and
the decoders taking turns.

A lone image (nothing else in flight, the service decides) skips the queue:
``run_alone`` decodes it and runs the model in the model thread, one hand-off
instead of three. A thread woken for the model call alone runs it slower than one
that has just worked: version 5 at batch 1 took 1.14 against 1.04 ms on idle cores,
and about twice as long while other processes shared them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from app.core import observe
from app.core.errors import ModelNotReadyError, QueueFullError
from app.core.metrics import Metrics

log = logging.getLogger("catdog.batcher")
UPLOAD_WINDOW_S = 1.0  # an upload still arriving after this long is not waited for
Row = TypeVar("Row")


@dataclass(eq=False)
class Upload:
    """A prediction request whose body is still being received."""

    client: str | None = None  # its address, for ``per_client``
    started: float = field(default_factory=time.perf_counter)
    request: observe.RequestContext | None = None  # as app.ops follows it (``observe.request_of``)


@dataclass
class Ticket:
    """Room reserved by one request; ``decoding`` of its images are not yet queued."""

    admission: Admission
    decoding: int

    def queued(self) -> None:
        """One of this request's images reached the batcher's queue."""
        self.decoding -= 1
        self.admission.decoding -= 1


class Admission:
    """Counts images in flight (in all and per client), bodies held, uploads on their way."""

    def __init__(self, limit: int, metrics: Metrics, per_client: int = 0, most_bytes: int = 0):
        self.limit, self.per_client, self.most_bytes, self.metrics = (
            limit, per_client, most_bytes, metrics
        )  # fmt: skip
        self.body_bytes = 0  # of prediction bodies held now (``hold``)
        self.started = 0  # prediction bodies and admissions so far (``activity``)
        self.in_flight = 0
        self.decoding = 0  # admitted images not yet queued for the batcher
        self.by_client: Counter[str] = Counter()
        self.uploads: set[Upload] = set()

    def refuse_if_full(self, images: int = 1, client: str | None = None) -> None:
        """``QueueFullError`` (counted) unless ``images`` more fit, in all and for ``client``."""
        if self.in_flight + images > self.limit:
            self.metrics.rejected.inc()
            raise QueueFullError(f"{self.in_flight} images in flight (limit {self.limit})")
        held = self.by_client[client] if client is not None else 0
        if self.per_client and held + images > self.per_client:
            self.metrics.client_capped.inc()
            raise QueueFullError(
                f"this client has {held} images in flight, and {images} more would pass its "
                f"limit of {self.per_client}"
            )

    def hold(self, size: int, own: int = 0) -> None:
        """Count ``size`` bytes of a body (``own`` of it held already) as held;
        ``QueueFullError`` past ``most_bytes``, unless no other body is held: a legal
        request fits alone."""
        others = self.body_bytes - own
        if self.most_bytes and others and self.body_bytes + size > self.most_bytes:
            self.metrics.rejected.inc()
            raise QueueFullError(
                f"{self.body_bytes} bytes of request bodies held, and {size} more would pass "
                f"the limit of {self.most_bytes}"
            )
        self.body_bytes += size
        self.started += not own

    def release(self, size: int) -> None:
        """Count ``size`` bytes that ``hold`` counted as no longer held."""
        self.body_bytes -= size

    @contextlib.contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """``hold(size)`` until the block ends."""
        self.hold(size)
        try:
            yield
        finally:
            self.release(size)

    @contextlib.contextmanager
    def uploading(self, client: str | None = None) -> Iterator[Upload]:
        """Count a prediction upload as on its way until it is admitted or ends."""
        upload = Upload(client)
        self.uploads.add(upload)
        try:
            yield upload
        finally:
            self.uploads.discard(upload)

    @contextlib.contextmanager
    def admit(self, images: int, upload: Upload | None = None) -> Iterator[Ticket]:
        """Reserve room for ``images`` for the duration of a request, or raise (503)."""
        client = None if upload is None else upload.client
        if upload is not None:
            self.uploads.discard(upload)  # from now on its images count as decoding
        self.refuse_if_full(images, client)
        ticket = Ticket(self, images)
        self.started += 1
        self.in_flight += images
        self.decoding += images
        if client is not None:
            self.by_client[client] += images
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield ticket
        finally:
            self.in_flight -= images
            self.decoding -= ticket.decoding
            if client is not None:
                self.by_client[client] -= images
                if not self.by_client[client]:
                    del self.by_client[client]
            self.metrics.in_flight.set(self.in_flight)

    def activity(self) -> tuple[int, int]:
        """Work under way and work started so far (``heap.release_when_idle``)."""
        return self.in_flight + self.body_bytes, self.started

    def on_the_way(self) -> int:
        """Images the batcher may wait for: decoding, and uploads younger than
        ``UPLOAD_WINDOW_S`` (a stalled client cannot hold every batch back)."""
        since = time.perf_counter() - UPLOAD_WINDOW_S
        return self.decoding + sum(1 for u in self.uploads if u.started > since)


class BatchModel(Protocol[Row]):
    """What the batcher runs: a stacked batch in, one result per image out."""

    def infer_rows(self, images: np.ndarray) -> Sequence[Row]: ...


@dataclass
class _Item(Generic[Row]):
    model: BatchModel[Row]
    image: np.ndarray
    future: asyncio.Future[Row]
    trace: Any = None  # the request's trace context when it is traced (app.core.observe)
    enqueued: float = field(default_factory=time.perf_counter)


def _record_spans(
    model: object, waits: list[tuple[Any, float]], started: float, call: float, done: float,
    batch: int,
) -> None:  # fmt: skip
    """Each traced image's wait in the queue (its trace and when it was queued) and the
    model call it shared with ``batch`` images in all, as spans of its own request."""
    attributes = {
        "catdog.batch_size": batch,
        "catdog.model_version": getattr(model, "version", ""),
        "catdog.runtime": getattr(model, "runtime_name", ""),
    }
    call_ns, done_ns = observe.wall_ns(call), observe.wall_ns(done)
    for trace, enqueued in waits:
        observe.record("queue wait", trace, observe.wall_ns(enqueued), observe.wall_ns(started))
        observe.record("model call", trace, call_ns, done_ns, **attributes)


def _stack_and_infer(model: BatchModel[Row], images: list[np.ndarray]) -> Sequence[Row]:
    """One model call; stacking (a ~19 MB copy for 32 images) stays off the event loop."""
    return model.infer_rows(np.stack(images))


@dataclass
class _Alone(Generic[Row]):
    row: Row
    call: float  # time.perf_counter() readings: the model call's start and end
    done: float


def _decode_and_infer(model: BatchModel[Row], decode: Callable[[], np.ndarray]) -> _Alone[Row]:
    """Decode one image, then run the model on it alone, in this thread."""
    image = decode()
    started = time.perf_counter()
    try:
        [row] = _stack_and_infer(model, [image])
    except Exception:  # a model failure; a decoding one is the caller's to report
        log.exception("inference failed for a lone image")
        raise
    return _Alone(row, started, time.perf_counter())


class Batcher:
    """Groups single-image inference calls into batches (see the module docstring)."""

    def __init__(
        self,
        max_batch_size: int,
        batch_timeout_ms: float,
        max_batch_wait_ms: float,
        metrics: Metrics,
        on_the_way: Callable[[], int],
    ) -> None:
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_ms / 1000.0
        self.max_wait = max_batch_wait_ms / 1000.0
        self.last_call = 0.0  # seconds taken by the previous model call
        self.metrics = metrics
        self._on_the_way = on_the_way
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None
        self._alone = asyncio.Lock()  # held while a lone image is in the model thread

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop the worker; images still queued fail with ``ModelNotReadyError``."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ModelNotReadyError("the service is stopping"))
        self._executor.shutdown(wait=True)

    async def in_model_thread(self, call: Callable[[], object]) -> None:
        """Run ``call`` in the thread that makes the model calls (a warm-up there warms
        what the runtime keeps per thread)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def submit(self, model: BatchModel[Row], image: np.ndarray, trace: Any = None) -> Row:
        """Queue one preprocessed image for ``model``; return its result. ``trace``: the
        request's trace context, under which its queue-wait and model-call spans go."""
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(model, image, future, trace))
        return await future

    async def run_alone(
        self, model: BatchModel[Row], decode: Callable[[], np.ndarray], trace: Any = None
    ) -> Row:
        """Decode one image with ``decode`` and run ``model`` on it alone, both in the model
        thread, without the queue; for an image the caller knows to be the only one in
        flight (a model call already queued in the thread waits for this one)."""
        begun = time.perf_counter()
        async with self._alone:
            alone = await asyncio.get_running_loop().run_in_executor(
                self._executor, _decode_and_infer, model, decode
            )
        self.last_call = alone.done - alone.call
        self.metrics.queue_wait.observe(0.0)
        self.metrics.inference.observe(self.last_call)
        self.metrics.batch_size.observe(1)
        if trace is not None:
            call_ns = observe.wall_ns(alone.call)
            observe.record("decode", trace, observe.wall_ns(begun), call_ns)
            _record_spans(model, [(trace, alone.call)], alone.call, alone.call, alone.done, 1)
        return alone.row

    def wait_limit(self) -> float:
        """Seconds the worker may wait for images on their way to join a batch."""
        return max(self.timeout, min(self.last_call, self.max_wait))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._alone.locked():  # wait here, so a request that leaves is never run
                async with self._alone:
                    pass
            deadline = time.perf_counter() + self.wait_limit()
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if self._on_the_way() <= 0 or remaining <= 0:
                    break  # nothing else is on its way, or we waited long enough
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._infer([item for item in batch if not item.future.done()])

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
            images = [item.image for item in items]
            try:
                t0 = time.perf_counter()
                rows = await loop.run_in_executor(
                    self._executor, _stack_and_infer, items[0].model, images
                )
                self.last_call = time.perf_counter() - t0
                self.metrics.inference.observe(self.last_call)
                self.metrics.batch_size.observe(len(items))
                waits = [(item.trace, item.enqueued) for item in items if item.trace is not None]
                if waits:  # the traced requests among them
                    done = t0 + self.last_call
                    _record_spans(items[0].model, waits, started, t0, done, len(items))
            except Exception as exc:  # a model failure fails these requests, not the worker
                log.exception("inference failed for a batch of %d", len(items))
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, row in zip(items, rows):
                if not item.future.done():
                    item.future.set_result(row)
