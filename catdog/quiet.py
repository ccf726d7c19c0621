"""Start TensorFlow quietly on a machine without a GPU.

TensorFlow's CUDA build writes a few lines to stderr on every start where there
is no GPU: an ``E ... failed call to cuInit`` error, "Could not find cuda
drivers", the oneDNN notice, a note on CPU instructions it was not built for.
On a CPU-only machine they say nothing new, and an "E" line on every command
looks like a fault. ``drop_expected_gpu_noise()`` routes file descriptor 2
through a filter that drops exactly those lines and passes everything else
through unchanged, so real errors still show. Where an NVIDIA device exists it
does nothing: there, those lines are worth reading.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path

EXPECTED_WITHOUT_GPU = (
    b"failed call to cuInit",
    b"Could not find cuda drivers on your machine",
    b"oneDNN custom operations are on",
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"This TensorFlow binary is optimized to use available CPU instructions",
    b"To enable the following instructions:",
)
_installed = False
_lock = threading.Lock()


def has_nvidia_device() -> bool:
    """Whether this machine exposes an NVIDIA GPU (driver loaded, device node present)."""
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def is_expected_noise(line: bytes) -> bool:
    """A stderr line that only says this machine has no GPU."""
    return any(marker in line for marker in EXPECTED_WITHOUT_GPU)


def _forward(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_expected_noise(line))
            if kept:
                os.write(write_fd, kept)
        if pending and not is_expected_noise(pending):
            os.write(write_fd, pending)


def drop_expected_gpu_noise() -> None:
    """Filter the process's stderr as described above (once; only without a GPU)."""
    global _installed
    with _lock:
        if _installed or has_nvidia_device():
            return
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        forwarder = threading.Thread(
            target=_forward, args=(read_fd, original), name="stderr-filter", daemon=True
        )
        forwarder.start()
        atexit.register(_drain, forwarder, original)
        _installed = True


def _drain(forwarder: threading.Thread, original: int) -> None:
    """At exit: put the real stderr back, which closes the pipe, and let the filter pass on
    what is still in it (a daemon thread would otherwise die with the last lines unsent)."""
    sys.stderr.flush()
    os.dup2(original, 2)
    forwarder.join(timeout=2.0)  # a child process still holding the pipe keeps it open
