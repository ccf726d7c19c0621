"""Admission control: how many images are in flight, and how many are on their way.

An image is *in flight* from the moment its request is admitted until it is
answered (decoding, queued, or in the model). Past ``limit`` images, a request is
refused with ``QueueFullError`` (503): admitting more would only make every
request slower.

The batcher asks how many images are *on their way*, to decide whether waiting
for a fuller batch is worth it. Two kinds count:

* admitted images still decoding (``Ticket.queued()`` ends that);
* prediction uploads still arriving (``uploading()``, opened by the middleware
  from a request's first byte, handed to ``admit``). Without them a batch was often
  cut while a few uploads of the same wave were still being read, and those
  requests waited a whole extra model call. An upload counts for at most
  ``UPLOAD_WINDOW_S``, so a slow or stalled client cannot hold every batch back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.core.errors import QueueFullError
from app.core.metrics import Metrics

UPLOAD_WINDOW_S = 1.0  # an upload still arriving after this long is not waited for


@dataclass(eq=False)
class Upload:
    """A prediction request whose body is still being received."""

    started: float = field(default_factory=time.perf_counter)


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
    """Counts images in flight against ``limit``, and uploads on their way."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0
        self.decoding = 0
        self._uploads: set[Upload] = set()

    def has_room(self, images: int = 1) -> bool:
        """Whether ``images`` more would be admitted now."""
        return self.in_flight + images <= self.limit

    def refuse_if_full(self, images: int = 1) -> None:
        """Raise ``QueueFullError`` (and count a rejection) unless ``images`` more fit."""
        if not self.has_room(images):
            self.metrics.rejected.inc()
            raise QueueFullError(f"{self.in_flight} images in flight (limit {self.limit})")

    @contextlib.contextmanager
    def uploading(self) -> Iterator[Upload]:
        """Count a prediction upload as on its way until it is admitted or ends."""
        upload = Upload()
        self._uploads.add(upload)
        try:
            yield upload
        finally:
            self._uploads.discard(upload)

    @contextlib.contextmanager
    def admit(self, images: int, upload: Upload | None = None) -> Iterator[Ticket]:
        """Reserve room for ``images`` for the duration of a request, or raise (503)."""
        if upload is not None:
            self._uploads.discard(upload)  # from now on its images count as decoding
        self.refuse_if_full(images)
        ticket = Ticket(self, images)
        self.in_flight += images
        self.decoding += images
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield ticket
        finally:
            self.in_flight -= images
            self.decoding -= ticket.decoding
            self.metrics.in_flight.set(self.in_flight)

    def on_the_way(self) -> int:
        """Images the batcher may wait for: decoding, plus uploads younger than the window."""
        since = time.perf_counter() - UPLOAD_WINDOW_S
        return self.decoding + sum(1 for u in self._uploads if u.started > since)
