"""``CATDOG_PAYLOAD_LOG``: one record per answered image, for drift monitoring.

The target is a file (JSON lines, appended) or an ``http(s)://`` URL, which gets
each record as a CloudEvent in structured mode (``application/cloudevents+json``,
``type`` ``org.catdog.prediction``), as KServe's logger sends its events.
``CATDOG_PAYLOAD_LOG_RATE`` samples the share of images recorded.

A record: request id, time, protocol, the image's sha256, its byte size and pixel
size (read from its header; for a tensor, its height and width), label,
probabilities, ``known`` and ``ood_score``, model version and the request's
latency. Never the image's bytes.

The request path only samples, hashes the sampled images and queues their records
(``put_nowait`` on a bounded queue); one writer thread sends them. When the queue
is full the record is dropped and counted (``catdog_payload_log_records_total
{result="dropped"}``); a sink that fails counts ``failed`` and is retried with the
next record.
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
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from app.core.metrics import Metrics
from app.core.observe import RequestContext

log = logging.getLogger("catdog.payload_log")
QUEUE_SIZE = 10_000  # records (about 300 bytes each) waiting for the writer
EVENT_TYPE = "org.catdog.prediction"
HTTP_TIMEOUT_S = 5.0
WRITE_BATCH = 256  # records the file sink appends in one write
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
        self, target: str, rate: float, metrics: Metrics, queue_size: int = QUEUE_SIZE
    ) -> None:
        self.target = target
        self.rate = rate
        self.metrics = metrics
        self.http = target.startswith(("http://", "https://"))
        self.source = f"/catdog/{socket.gethostname()}"
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
        """Queue a record for each sampled image of one answered request."""
        for image, answer in zip(images, answers):
            if self.rate < 1.0 and random.random() >= self.rate:
                continue
            data = image.tobytes() if isinstance(image, np.ndarray) else image
            record = {
                "request_id": context.request_id if context else None,
                "time": dt.datetime.now(dt.timezone.utc).isoformat(),
                "protocol": context.protocol if context else None,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "pixels": pixel_size(image),
                "label": answer.label,
                "probabilities": answer.probabilities,
                "known": answer.known,
                "ood_score": answer.ood_score,
                "model_version": answer.model_version,
                "latency_ms": round(seconds * 1000, 3),
            }
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.metrics.payload_log.labels(result="dropped").inc()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` s), then stop the writer."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._writer.join(timeout)

    def _run(self) -> None:
        while True:
            records = [self._queue.get()]
            while not self.http and len(records) < WRITE_BATCH and not self._queue.empty():
                records.append(self._queue.get_nowait())  # one open and write for many
            stop = any(r is _STOP for r in records)
            records = [r for r in records if r is not _STOP]
            try:
                if self.http:
                    for record in records:
                        self._post(record)
                elif records:
                    with open(self.target, "a", encoding="utf-8") as f:
                        f.write("".join(json.dumps(r) + "\n" for r in records))
            except (OSError, urllib.error.URLError) as exc:
                self.metrics.payload_log.labels(result="failed").inc(len(records))
                log.warning("payload log: %s", exc)
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
