"""Keep full garbage collections short once the model is loaded, and hand freed memory
back to the system.

With TensorFlow and a SavedModel loaded, ~366,000 long-lived objects sit on the heap; a
full collection walked them in 180-220 ms (2 cores), every few seconds under load, with
the event loop stopped. Frozen after start-up (``gc.freeze``) they are skipped: 2-17 ms.
Serving, the young generation is collected after ``YOUNG_THRESHOLD`` allocations, not
CPython's 700: at 64 clients (15 s, LiteRT, 2 cores) 700 gave ~290 young and ~27 middle
collections, each walking the objects of the requests in flight, for 105-130 µs of
each request's CPU (~510 and ~47, 145-210 µs, with JSON logs, the payload log and
tracing on); at 7,000 the live young objects never reached the bound: one
collection in 15 s, 2-10 µs a request; peak RSS under that load stayed within 2 MB.
Little cyclic garbage waits for it, and none that holds a body: on REST, 200 requests
of each answer (200, 400, 401, 415, 422) left the same ~130 collected objects; a
refused gRPC call leaves ~50-75 (collected every ~100 refusals instead of ~10), and
100 refused 4 MB messages grew RSS by 36 MB at 7,000 and 32 MB at 700, where 100
messages held until a collection would be 400 MB.
glibc keeps what Python frees: after 12 TF Serving bodies of 25 MB at once (``python -m
bench memory_release``, commit ef329f7) the idle process held 462 MB against 216 MB
before; ``release_when_idle`` trims it (``malloc_trim``) once the service is idle: 232 MB
5 s after. JSON parsing processes trim every 2 s (``trim_forever``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import threading
import time
from collections.abc import Callable

IDLE_TRIM_S = 2.0  # how often an idle process hands freed memory back
YOUNG_THRESHOLD = 7000  # allocations between young collections while serving
DEFAULT_THRESHOLD = gc.get_threshold()  # CPython's, given back by ``thaw``


def _load_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _load_trim()


def trim() -> None:
    """Hand the heap's free pages back to the system (glibc; a no-op elsewhere)."""
    if _TRIM is not None:
        _TRIM(0)


async def release_when_idle(
    activity: Callable[[], tuple[int, int]], every: float = IDLE_TRIM_S
) -> None:
    """Every ``every`` seconds, ``trim`` in a thread if the service is idle and has worked
    since the last trim: ``activity()`` gives (work under way, work started so far). So
    the heap is trimmed once after each burst, never while serving."""
    trimmed_at: int | None = None
    while True:
        await asyncio.sleep(every)
        under_way, started = activity()
        if not under_way and started != trimmed_at:
            trimmed_at = started
            await asyncio.to_thread(trim)


def trim_forever(every: float = IDLE_TRIM_S) -> None:
    """In a worker process: a daemon thread that trims every ``every`` seconds."""

    def run() -> None:
        while True:
            time.sleep(every)
            trim()

    threading.Thread(target=run, name="trim", daemon=True).start()


def settle() -> None:
    """Collect what loading left behind, freeze every object still alive, and collect
    the young generation every ``YOUNG_THRESHOLD`` allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *DEFAULT_THRESHOLD[1:])


def thaw() -> None:
    """Hand frozen objects back to the collector, so that a replaced model can be freed,
    with the collector's thresholds as they were before ``settle``."""
    gc.unfreeze()
    gc.set_threshold(*DEFAULT_THRESHOLD)
