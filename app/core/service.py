"""The inference service: one object that takes image bytes to a classification.

``classify`` picks the version, admits the images (``Admission``), decodes each in a
thread with the project's one preprocessing within the ``PixelBudget``, sends them
through the batcher (the only image in flight, none on its way, is decoded and run in
the model thread instead) and answers each as a ``Classification``. Nothing here knows
about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request

from app.core import heap, observe
from app.core.batcher import Admission, Batcher, Ticket, Upload
from app.core.config import Settings
from app.core.errors import InvalidInputError, ModelLoadError
from app.core.metrics import Metrics
from app.core.offload import Offload
from app.core.registry import ImageResult, LoadedModel, ModelRegistry, VersionPolicy, load_version
from catdog.contract import ModelContract
from catdog.preprocessing import ImageError, preprocess
from catdog.runtimes import gpu_problem

log = logging.getLogger("catdog")
DRAIN_TIMEOUT_S = 30.0  # at shutdown, how long images in flight may take to finish
TRIM_ABOVE_PIXELS = 4_000_000  # ~80 MB of decoding memory: worth a malloc_trim (~ms)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. ``taskset`` or a cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class PixelBudget:
    """A cap on the pixels being decoded at once, shared by the decoding threads.

    Decoding holds several full-size copies of an image, so a file of a few hundred
    kilobytes can take hundreds of megabytes (``python -m bench decode_memory``;
    docs/service.md); one decoding thread per core would let a few such uploads take
    gigabytes. ``hold(pixels)`` waits until the image's pixels fit (small photos pass
    straight through; one larger than the budget takes all of it). glibc keeps freed
    blocks in each thread's arena, so after a large image (``TRIM_ABOVE_PIXELS``) it
    hands free memory back (``heap.trim``).
    """

    def __init__(self, pixels: int, trim: Callable[[], object] | None = heap.trim) -> None:
        if pixels < 1:
            raise ValueError(f"a pixel budget must be positive, not {pixels}")
        self.total = self.free = pixels
        self._changed = threading.Condition()
        self._trim = trim

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Take ``pixels`` (at most the whole budget) for the duration of the block."""
        pixels = min(max(pixels, 0), self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            if pixels >= TRIM_ABOVE_PIXELS and self._trim is not None:
                self._trim()  # before the next big decode may start
            with self._changed:
                self.free += pixels
                self._changed.notify_all()


@dataclass(frozen=True)
class Classification:
    """The answer for one image."""

    label: str
    class_index: int
    probabilities: dict[str, float]
    model_version: str
    ood_score: float | None = None
    known: bool | None = None  # None: the model has no out-of-distribution signal


class InferenceService:
    """Owns the registry, decoders, pixel budget, admission, batcher and JSON ``offload``."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.accepting = False
        cores = usable_cpus()
        self._threads = settings.inference_threads or cores
        self.admission = Admission(
            settings.max_images_in_flight,
            metrics,
            settings.max_images_per_client,
            settings.body_bytes_budget,
        )
        self.registry = ModelRegistry(
            settings.model_dir, self._load, metrics, VersionPolicy.parse(settings.version_policy)
        )
        self.batcher = Batcher(
            settings.max_batch_size,
            settings.batch_timeout_ms,
            settings.max_batch_wait_ms,
            metrics,
            self.admission.on_the_way,
        )
        self.pixel_budget = PixelBudget(settings.decode_pixel_budget)
        self._decode_workers = settings.decode_workers or cores
        self._decoders = ThreadPoolExecutor(self._decode_workers, thread_name_prefix="decode")
        self.offload = Offload(settings.json_parse_processes)
        self._watcher: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None
        self.payload_log: Any = None  # app.ops.payload_log.PayloadLog, installed by app.ops
        metrics.ready.set_function(lambda: float(self.ready))  # read at each scrape

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the newest version (``ModelLoadError`` if it can't be served), then serve."""
        await asyncio.to_thread(self.registry.load_initial)
        if self.settings.require_gpu:
            runtime = self.registry.current.runtime_name
            problem = await asyncio.to_thread(gpu_problem, runtime)
            if problem:
                raise ModelLoadError(f"CATDOG_REQUIRE_GPU is set but {problem}")
        await self._warm_decoders()
        model = self.registry.current
        await self.batcher.in_model_thread(
            functools.partial(model.warm_up, tuple(range(1, self.settings.max_batch_size + 1)))
        )
        self.batcher.start()
        heap.settle()  # full collections would otherwise stall serving for ~200 ms
        await asyncio.to_thread(heap.trim)  # what loading and warming up freed: ~20 MB
        if self.settings.poll_interval_s > 0:
            self._watcher = asyncio.create_task(
                self.registry.watch(self.settings.poll_interval_s), name="watcher"
            )
        self._releaser = asyncio.create_task(
            heap.release_when_idle(self.admission.activity), name="releaser"
        )
        self.accepting = True
        model = self.registry.current
        log.info(
            "ready: version %s on %s (%d inference threads), max batch %d, %d images in flight",
            model.version,
            model.runtime_name,
            self._threads,
            self.settings.max_batch_size,
            self.settings.max_images_in_flight,
        )

    async def _warm_decoders(self) -> None:
        """Decode an image of each format on every decoding thread: the first requests
        neither start those threads nor load the image plugins."""
        model = self.registry.current
        samples = warm_up_images(self.settings.image_formats)
        await asyncio.gather(
            *(self._decode(model, data) for data in samples for _ in range(self._decode_workers))
        )

    async def stop(self) -> None:
        """Refuse new work, let the images in flight finish, then stop every worker."""
        self.accepting = False
        for task in (self._watcher, self._releaser):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.admission.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self.batcher.stop()
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self.offload.close()
        heap.thaw()

    @property
    def ready(self) -> bool:
        """Serving: a warmed-up model is loaded and the service is not stopping."""
        return self.accepting and self.registry.ready

    @property
    def model(self) -> LoadedModel:
        """The highest loaded version."""
        return self.registry.current

    def model_for(self, version: str | None) -> LoadedModel:
        """A loaded version (None: the highest); ``VersionNotFoundError`` if not loaded."""
        return self.registry.get(version)

    def _load(self, folder: Path) -> LoadedModel:
        return load_version(
            folder, self.settings.runtime, self._threads, self.settings.max_batch_size
        )

    # ------------------------------------------------------------ the request path

    async def classify(
        self,
        images: list[bytes] | list[memoryview] | np.ndarray,
        names: list[str] | None = None,
        upload: Upload | None = None,
        version: str | None = None,
    ) -> list[Classification]:
        """Classify image files (bytes, or views into a body; ``ImageError`` names a bad
        one) or float32 pixels [N, H, W, 3] already scaled per the version's contract."""
        model = self.model_for(version)
        pixels = isinstance(images, np.ndarray)
        if pixels:
            check_pixels(images, model.contract)
        started = time.perf_counter()
        trace = observe.capture()  # None unless this request is traced
        # No ExitStack here: its exit makes a reference cycle through a refused request's
        # error, which would keep the request's files until a full collection.
        with self.admission.admit(len(images), upload) as ticket:
            attributes = _attributes(trace, model, len(images))
            observe.record_since("admission", trace, started, **attributes)
            alone = len(images) == 1 == self.admission.in_flight == self.admission.on_the_way()
            if alone and not pixels:
                results = [await self._alone(ticket, model, images[0], trace)]
            else:
                arrays: list[Any] = list(images)
                if not pixels:
                    decoding = (self._decode(model, data, trace) for data in images)
                    arrays = await asyncio.gather(*decoding, return_exceptions=True)
                    _raise_first_error(arrays, names)
                predicting = (self._predict(ticket, model, a, trace) for a in arrays)
                results = await asyncio.gather(*predicting)
        return self._answer(model, results, list(images), started, upload, trace)

    async def _decode(self, model: LoadedModel, data: bytes | memoryview, trace: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        with observe.span("decode", trace, **_attributes(trace, model, 1)):
            return await loop.run_in_executor(self._decoders, self._preprocess(model, data))

    def _preprocess(
        self, model: LoadedModel, data: bytes | memoryview
    ) -> functools.partial[np.ndarray]:
        """The preprocessing of one file with the service's limits, to call in a thread."""
        return functools.partial(
            preprocess,
            data,
            model.contract.image_size,
            max_pixels=self.settings.max_pixels,
            gate=self.pixel_budget.hold,
            formats=self.settings.image_formats,
            max_pixels_per_byte=self.settings.max_pixels_per_byte,
        )

    async def _alone(
        self, ticket: Ticket, model: LoadedModel, data: bytes | memoryview, trace: Any
    ) -> ImageResult:
        """The only image in flight: decoded and run in the model thread (``run_alone``)."""
        ticket.queued()  # it never joins the queue: no batch should wait for it
        try:
            return await self.batcher.run_alone(model, self._preprocess(model, data), trace)
        except ImageError as exc:  # anew, without the frames that hold the file
            raise type(exc)(exc.reason) from None

    async def _predict(
        self, ticket: Ticket, model: LoadedModel, image: np.ndarray, trace: Any
    ) -> ImageResult:
        ticket.queued()
        return await self.batcher.submit(model, image, trace)

    def _answer(
        self,
        model: LoadedModel,
        results: list[ImageResult],
        images: list[Any],
        started: float,
        upload: Upload | None,
        trace: Any,
    ) -> list[Classification]:
        """Each result as a ``Classification``: counted, noted on the request (``Upload``),
        offered to the payload log."""
        with observe.span("encode", trace, **_attributes(trace, model, len(results))):
            answers = [classification(model, r) for r in results]
        for answer in answers:
            known = "unknown" if answer.known is None else str(answer.known).lower()
            self.metrics.predictions.labels(label=answer.label, known=known).inc()
        request = upload.request if upload is not None else None
        if request is not None:
            request.answered(answers)
        if self.payload_log is not None:
            self.payload_log.offer(images, answers, time.perf_counter() - started, request)
        return answers


def classification(model: LoadedModel, result: ImageResult) -> Classification:
    """One model output as the answer: probabilities summing to exactly 1, the label, and
    ``known`` from the version's OOD threshold (the batch job's rows use it too)."""
    probabilities = result.probabilities / result.probabilities.sum()
    probabilities[-1] = 1.0 - probabilities[:-1].sum()  # exactly 1 in total
    index = int(np.argmax(probabilities))
    names = model.contract.class_names
    known = None
    threshold = model.ood_threshold
    if result.ood_score is not None and threshold is not None:
        known = result.ood_score <= threshold
    return Classification(
        label=names[index],
        class_index=index,
        probabilities={n: float(p) for n, p in zip(names, probabilities)},
        model_version=model.version,
        ood_score=result.ood_score,
        known=known,
    )


def _attributes(trace: Any, model: LoadedModel, images: int) -> dict[str, object]:
    """A traced request's stage attributes (none untraced): version, runtime, images."""
    if trace is None:
        return {}
    return {
        "catdog.model_version": model.version,
        "catdog.runtime": model.runtime_name,
        "catdog.images": images,
    }


def warm_up_images(formats: tuple[str, ...]) -> list[bytes]:
    """A small grey image in each of ``formats`` that Pillow can write."""
    from io import BytesIO

    from PIL import Image

    samples = []
    for name in formats:
        out = BytesIO()
        try:
            Image.new("RGB", (32, 32), (128, 128, 128)).save(out, name)
        except (KeyError, OSError, ValueError):  # a format Pillow reads but cannot write
            continue
        samples.append(out.getvalue())
    return samples


def check_pixels(pixels: np.ndarray, contract: ModelContract) -> None:
    """``InvalidInputError`` unless ``pixels`` is float32 [N>=1, H, W, 3], finite, in [0, 1]."""
    expected = (*contract.image_size, 3)
    if pixels.dtype != np.float32 or pixels.ndim != 4 or pixels.shape[1:] != expected:
        shape = ", ".join(map(str, expected))
        raise InvalidInputError(
            f"expected float32 pixels [N, {shape}], got {pixels.dtype} {list(pixels.shape)}"
        )
    if len(pixels) == 0:
        raise InvalidInputError("no images: the batch dimension is 0")
    finite = np.isfinite(pixels)
    if not finite.all():
        raise InvalidInputError(
            f"pixel values must be finite and in [0, 1] (scaling {contract.scaling}); "
            f"{pixels.size - np.count_nonzero(finite)} are NaN or infinite"
        )
    if pixels.min() < 0.0 or pixels.max() > 1.0:
        raise InvalidInputError(
            f"pixel values must be finite and in [0, 1] (scaling {contract.scaling}); got "
            f"[{pixels.min():g}, {pixels.max():g}]"
        )


def _raise_first_error(results: list[object], names: list[str] | None) -> None:
    """Raise the first decoding failure (in a batch, naming its file). An image error is
    raised anew: its traceback holds the decoding frames (each with the file) and,
    through ``results``, itself, a cycle that keeps every file of a refused request
    until a full garbage collection."""
    for position, result in enumerate(results):
        if isinstance(result, ImageError):
            named = names is not None and len(results) > 1
            reason = f"file {position} ({names[position]}): " if named else ""  # type: ignore[index]
            raise type(result)(reason + result.reason)
        if isinstance(result, BaseException):
            raise result


async def get_service(request: Request) -> InferenceService:
    """The app's inference service (``async``: a plain ``def`` would cost a thread hop)."""
    return request.app.state.service


ServiceDep = Annotated[InferenceService, Depends(get_service)]
