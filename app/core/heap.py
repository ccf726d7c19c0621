"""Keep full garbage collections short once the model is loaded.

With TensorFlow and a SavedModel loaded, about 366,000 long-lived Python objects
sit on the heap. A full (generation 2) collection walks all of them: 180-220 ms
on the 2-core benchmark machine, while the event loop and the decoding threads stand
still and every request in flight waits. It happened every few seconds under
load. Frozen after start-up (``gc.freeze``), those objects are skipped, and a full
collection takes 2-17 ms.

After a burst of large bodies, glibc keeps the memory Python freed. ``python -m bench
memory_release --model-dir <version 4>`` (at commit ef329f7; 12 TF Serving bodies of
25 MB at once) left
the idle main process at 462 MB, 216 MB before the burst; ``release_when_idle`` hands
it back (``malloc_trim``) once the service is idle: 232 MB 5 s after. Each JSON parsing
process trims likewise every 2 s (``trim_forever``); it stays at ~80 MB, what a fresh
one holds.
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
    """Collect what loading left behind, then freeze every object still alive."""
    gc.collect()
    gc.freeze()


def thaw() -> None:
    """Hand frozen objects back to the collector, so that a replaced model can be freed."""
    gc.unfreeze()
