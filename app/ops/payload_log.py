"""``CATDOG_PAYLOAD_LOG``: one record per answered image, for drift monitoring.

The target is a file (JSON lines, appended) or an ``http(s)://`` URL, which gets
each record as a CloudEvent in structured mode (``application/cloudevents+json``,
``type`` ``org.catdog.prediction``), as KServe's logger sends its events.
``CATDOG_PAYLOAD_LOG_RATE`` samples the share of images recorded.

A record: request id, time, protocol, the image's sha256, its byte size and pixel
size (read from its header; for a tensor, its height and width), label,
probabilities, ``known`` and ``ood_score``, model version and the request's
latency. Never the image's bytes.

The request path only samples and queues (``put_nowait`` on a bounded queue) the
image's bytes with its answer; one writer thread hashes them, reads the header and
sends the records. When the queue is full, or the images waiting would pass
``QUEUE_BYTES``, the record is dropped and counted
(``catdog_payload_log_records_total{result="dropped"}``); a sink that fails in any
way (an answer that is not HTTP too) counts ``failed`` and is tried again with the
next record. The file sink gathers for ``GATHER_S`` after a record and appends what
came meanwhile, up to ``WRITE_BATCH`` records, in one write.

Why the writer hashes and gathers: measured with one record every 30 ms (a server
at ~330 requests/s, one image in ten logged), hashing a 5 KB photo and reading its
header on the request path took ~250 µs of the event loop per record, not the
~20 µs of a tight loop (cold caches between records); queueing the bytes instead
takes ~70 µs. Waking the writer and opening the file for every record cost its
thread ~170 µs a record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import queue
import random
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from app.core.metrics import Metrics
from app.core.observe import RequestContext

log = logging.getLogger("catdog.payload_log")
QUEUE_SIZE = 10_000  # records waiting for the writer
QUEUE_BYTES = 64 * 1024 * 1024  # and the image bytes they hold, until the writer hashes them
GATHER_S = 0.2  # the file sink's wait for more records after one arrives
WRITE_BATCH = 256  # records the file sink appends in one write, at most
EVENT_TYPE = "org.catdog.prediction"
HTTP_TIMEOUT_S = 5.0
_STOP = object()


def pixel_size(image: bytes | memoryview | np.ndarray) -> list[int] | None:
    """[width, height] of an image file (its header only) or a [H, W, 3] tensor."""
    if isinstance(image, np.ndarray):
        return [int(image.shape[1]), int(image.shape[0])]
    try:
        with Image.open(io.BytesIO(image)) as opened:
            return list(opened.size)
    except Exception:  # the service decoded it; a header Pillow cannot read just has no size
        return None


class PayloadLog:
    """Samples answered images into records and writes them off the request path."""

    def __init__(
        self,
        target: str,
        rate: float,
        metrics: Metrics,
        queue_size: int = QUEUE_SIZE,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.target = target
        self.rate = rate
        self.metrics = metrics
        self.http = target.startswith(("http://", "https://"))
        self.source = f"/catdog/{socket.gethostname()}"
        self.queue_bytes = queue_bytes
        self._held = 0  # bytes of the queued images
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._writer = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._writer.start()

    def offer(
        self,
        images: Sequence[bytes | memoryview | np.ndarray],
        answers: list[Any],
        seconds: float,
        context: RequestContext | None = None,
    ) -> None:
        """Queue each sampled image of one answered request, with its answer."""
        for image, answer in zip(images, answers):
            if self.rate < 1.0 and random.random() >= self.rate:
                continue
            tensor = isinstance(image, np.ndarray)
            size = image.nbytes if tensor else len(image)
            with self._lock:  # counted before any copy: one past the bound is not copied
                held = self._held + size <= self.queue_bytes
                self._held += size if held else 0
            if held:
                # A view is copied: the request's body is not held past the request.
                data = image.tobytes() if tensor else bytes(image)
                pixels = pixel_size(image) if tensor else None  # a tensor's is its shape
                try:
                    self._queue.put_nowait((data, pixels, answer, time.time(), seconds, context))
                    continue
                except queue.Full:
                    self._release(size)
            self.metrics.payload_log.labels(result="dropped").inc()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` s), then stop the writer."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._writer.join(timeout)

    def _release(self, size: int) -> None:
        with self._lock:
            self._held -= size

    def _record(self, item: tuple[Any, ...]) -> dict[str, Any]:
        """The record of one queued image (hashed here, off the request path)."""
        data, pixels, answer, when, seconds, context = item
        record = {
            "request_id": context.request_id if context else None,
            "time": dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat(),
            "protocol": context.protocol if context else None,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "pixels": pixels or pixel_size(data),
            "label": answer.label,
            "probabilities": answer.probabilities,
            "known": answer.known,
            "ood_score": answer.ood_score,
            "model_version": answer.model_version,
            "latency_ms": round(seconds * 1000, 3),
        }
        self._release(len(data))
        return record

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            if not self.http and items[0] is not _STOP and self._queue.qsize() < WRITE_BATCH:
                time.sleep(GATHER_S)  # one wake, open and write for all that come meanwhile
            while not self.http and len(items) < WRITE_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            stop = any(i is _STOP for i in items)
            records = [self._record(i) for i in items if i is not _STOP]
            try:
                if self.http:
                    for record in records:
                        self._post(record)
                elif records:
                    with open(self.target, "a", encoding="utf-8") as f:
                        f.write("".join(json.dumps(r) + "\n" for r in records))
            except Exception as exc:  # any failure of the sink (a garbled HTTP answer too):
                # counted, and the writer goes on; should it stop, the queue would fill
                self.metrics.payload_log.labels(result="failed").inc(len(records))
                log.warning("payload log: %s: %s", type(exc).__name__, exc)
            else:
                self.metrics.payload_log.labels(result="written").inc(len(records))
            if stop:
                return

    def _post(self, record: dict[str, Any]) -> None:
        """One CloudEvent, structured mode (the standard library's client: serving has no
        other HTTP client among its dependencies)."""
        event = {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": self.source,
            "type": EVENT_TYPE,
            "time": record["time"],
            "datacontenttype": "application/json",
            "data": record,
        }
        if record["request_id"]:
            event["subject"] = record["request_id"]
        request = urllib.request.Request(
            self.target,
            data=json.dumps(event).encode(),
            headers={"content-type": "application/cloudevents+json; charset=utf-8"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            response.read()  # a non-2xx status raises HTTPError (a URLError)
