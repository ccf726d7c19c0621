"""CPU-bound work the event loop must not wait on, run in worker processes.

Parsing JSON numbers builds a Python object per number while holding the GIL for the
whole parse, so a thread would stall the event loop just as much as parsing on it
(``bench/results/json-offload.md`` measures the stall). ``Offload`` runs such a
function in ``workers`` spawned processes
(``spawn``: the service has TensorFlow and LiteRT threads, which ``fork`` would copy
half-way). The processes start on first use, so a service that never gets such a
request never pays for them. At most ``workers`` calls are in the processes at once;
the rest wait here, holding only what they already hold. A worker that dies (killed
for memory) fails its call with ``OffloadBrokenError``; the next call gets new ones.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")


class OffloadBrokenError(RuntimeError):
    """A worker process died during the call; the call may be retried."""


class Offload:
    """A lazily started pool of ``workers`` processes for picklable functions."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(max(workers, 1))

    @property
    def enabled(self) -> bool:
        """False with 0 workers: callers run the function themselves."""
        return self.workers > 0

    def processes(self) -> list[int]:
        """The process ids of the running workers (none before the first call)."""
        pool = self._pool
        return [p.pid for p in (pool._processes or {}).values()] if pool else []  # noqa: SLF001

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker process; ``OffloadBrokenError`` if it dies."""
        async with self._slots:
            pool = self._pool_now()
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
            except BrokenProcessPool:
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
                raise OffloadBrokenError("a worker process died during the call") from None

    def close(self) -> None:
        """Stop the workers without waiting for calls in progress."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _pool_now(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool
