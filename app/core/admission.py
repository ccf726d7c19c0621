"""Admission control: how many images are in flight, and how many are on their way.

Request bodies held in memory are counted too (``holding``): past ``most_bytes``
(``CATDOG_BODY_BYTES_BUDGET``) a request is refused the same way before its body
is read, so that many large bodies at once cannot exhaust memory.

An image is *in flight* from the moment its request is admitted until it is
answered (decoding, queued, or in the model). Past ``limit`` images, a request is
refused with ``QueueFullError`` (503): admitting more would only make every
request slower.

With ``per_client`` set, one client (its address, as the ASGI scope names it) may
hold at most that many of them: past it, its requests are refused the same way
(``QueueFullError``, counted apart), while other clients are still admitted. A
client that opens many connections then cannot fill the queue that everyone else
waits in.

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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.core.errors import QueueFullError
from app.core.metrics import Metrics

UPLOAD_WINDOW_S = 1.0  # an upload still arriving after this long is not waited for


@dataclass(eq=False)
class Upload:
    """A prediction request whose body is still being received."""

    client: str | None = None  # its address, for ``per_client``
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

    def __init__(
        self, limit: int, metrics: Metrics, per_client: int = 0, most_bytes: int = 0
    ) -> None:
        self.limit = limit
        self.most_bytes = most_bytes
        self.body_bytes = 0  # of prediction bodies held now (``holding``)
        self.started = 0  # prediction bodies and admissions so far (``activity``)
        self.per_client = per_client
        self.metrics = metrics
        self.in_flight = 0
        self.decoding = 0
        self.by_client: Counter[str] = Counter()
        self._uploads: set[Upload] = set()

    def has_room(self, images: int = 1) -> bool:
        """Whether ``images`` more would be admitted now."""
        return self.in_flight + images <= self.limit

    def refuse_if_full(self, images: int = 1, client: str | None = None) -> None:
        """Raise ``QueueFullError`` (and count a rejection) unless ``images`` more fit, in
        all and for ``client``."""
        if not self.has_room(images):
            self.metrics.rejected.inc()
            raise QueueFullError(f"{self.in_flight} images in flight (limit {self.limit})")
        held = self.by_client[client] if client is not None else 0
        if self.per_client and held + images > self.per_client:
            self.metrics.client_capped.inc()
            raise QueueFullError(
                f"this client has {held} images in flight, and {images} more would pass its "
                f"limit of {self.per_client}"
            )

    @contextlib.contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """Count ``size`` bytes of a request body as held in memory until the request ends;
        ``QueueFullError`` when they would pass ``most_bytes`` (a request is admitted
        whatever its size when no other body is held: a legal request always fits alone)."""
        if self.most_bytes and self.body_bytes and self.body_bytes + size > self.most_bytes:
            self.metrics.rejected.inc()
            raise QueueFullError(
                f"{self.body_bytes} bytes of request bodies held, and {size} more would pass "
                f"the limit of {self.most_bytes}"
            )
        self.body_bytes += size
        self.started += 1
        try:
            yield
        finally:
            self.body_bytes -= size

    @contextlib.contextmanager
    def uploading(self, client: str | None = None) -> Iterator[Upload]:
        """Count a prediction upload as on its way until it is admitted or ends."""
        upload = Upload(client)
        self._uploads.add(upload)
        try:
            yield upload
        finally:
            self._uploads.discard(upload)

    @contextlib.contextmanager
    def admit(self, images: int, upload: Upload | None = None) -> Iterator[Ticket]:
        """Reserve room for ``images`` for the duration of a request, or raise (503)."""
        client = None if upload is None else upload.client
        if upload is not None:
            self._uploads.discard(upload)  # from now on its images count as decoding
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
        """Work under way (images in flight plus bodies held, in any unit) and work
        started so far: what ``heap.release_when_idle`` watches."""
        return self.in_flight + self.body_bytes, self.started

    def on_the_way(self) -> int:
        """Images the batcher may wait for: decoding, plus uploads younger than the window."""
        since = time.perf_counter() - UPLOAD_WINDOW_S
        return self.decoding + sum(1 for u in self._uploads if u.started > since)
