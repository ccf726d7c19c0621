"""A cap on the pixels being decoded at once, shared by the decoding threads.

Decoding holds several full-size copies of an image, so a file of a few hundred
kilobytes can take hundreds of megabytes while it decodes (``python -m
bench.decode_memory`` measures it; the figure is in docs/service.md). One
decoding thread per core would let a handful of such uploads take gigabytes on a
large machine. A thread first takes the image's pixels from the budget and waits
while others hold it; small photos pass straight through. An image larger than
the whole budget takes all of it.

A budget alone does not bound memory: glibc keeps freed blocks in each thread's
malloc arena, so threads that each decoded one large image in turn hold on to
all of it. After a large image (``TRIM_ABOVE_PIXELS``) the budget therefore asks
glibc to return free memory to the system (``malloc_trim``; a no-op elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Callable, Iterator

TRIM_ABOVE_PIXELS = 4_000_000  # ~80 MB of decoding memory: worth a malloc_trim (~ms)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is no such function."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


class PixelBudget:
    """``hold(pixels)``: a context manager that waits until ``pixels`` fit in the budget."""

    def __init__(self, pixels: int, trim: Callable[[], object] | None = _TRIM) -> None:
        if pixels < 1:
            raise ValueError(f"a pixel budget must be positive, not {pixels}")
        self.total = pixels
        self._free = pixels
        self._changed = threading.Condition()
        self._trim = trim

    @property
    def free(self) -> int:
        """Pixels not held right now."""
        return self._free

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Take ``pixels`` (at most the whole budget) for the duration of the block."""
        pixels = min(max(pixels, 0), self.total)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            if pixels >= TRIM_ABOVE_PIXELS and self._trim is not None:
                self._trim()  # before the next big decode may start
            with self._changed:
                self._free += pixels
                self._changed.notify_all()
