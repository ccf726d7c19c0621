"""CPU-bound work the event loop must not wait on, run in worker processes.

Reading a large body of JSON numbers holds the GIL for most of the parse, so a thread
would stall the event loop nearly as much as parsing on it
(``bench/results/json-offload.md`` measures the stall). ``Offload`` runs such a function
in ``workers`` spawned processes (``spawn``: the service has TensorFlow and LiteRT
threads, which ``fork`` would copy half-way). The processes start on first use, so a
service that never gets such a request never pays for them. At most ``workers`` calls
are in the processes at once, counted until each call ends in its process, even when its
caller has gone (a client that left); the rest wait here, holding only what they already
hold. A worker that dies during a call (killed for memory, perhaps by that call), or in
the moment before the pool notices, fails the call with ``OffloadBrokenError``; one
found dead before a call is handed over (killed while idle) is replaced first, so that
call never sees it. ``close`` kills the workers: uvicorn ends on SIGTERM without running
``atexit``, and a worker left waiting would outlive the service. Each worker hands the
memory a large parse freed back to the system every 2 s (``heap.trim_forever``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from app.core import heap

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
        """``function(*args)`` in a worker process; ``OffloadBrokenError`` if it dies.

        A caller cancelled meanwhile returns at once, but its slot is only freed when
        the call ends in its process (``shield``)."""
        await self._slots.acquire()
        try:
            pool, call = self._submit(function, args)
        except BaseException:
            self._slots.release()
            raise
        call.add_done_callback(self._ended)
        try:
            return await asyncio.shield(call)
        except BrokenProcessPool:
            self._discard(pool)
            raise OffloadBrokenError("a worker process died during the call") from None

    def _ended(self, call: asyncio.Future[Any]) -> None:
        """A call ended in its process: free its slot (and take its error, which a caller
        that left would never read)."""
        self._slots.release()
        if not call.cancelled():
            call.exception()

    def close(self) -> None:
        """Kill the workers, calls in progress included."""
        if self._pool is not None:
            self._discard(self._pool)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Kill ``pool``'s workers, and forget it if it is still the current one (a call
        that failed late may name a pool already replaced)."""
        if self._pool is pool:
            self._pool = None
            _stop(pool)

    def _submit(
        self, function: Callable[..., T], args: tuple[Any, ...]
    ) -> tuple[ProcessPoolExecutor, asyncio.Future[T]]:
        """The call handed to a pool whose workers run. A pool that turns out broken as
        the call is handed over (its worker died a moment ago, not yet seen by
        ``_pool_now``) is replaced and the call handed to the new one."""
        loop = asyncio.get_running_loop()
        for _ in range(2):
            pool = self._pool_now()
            try:
                return pool, loop.run_in_executor(pool, function, *args)
            except BrokenProcessPool:
                self._discard(pool)
        raise OffloadBrokenError("no worker process would start")

    def _pool_now(self) -> ProcessPoolExecutor:
        """The pool to submit to: a new one when there is none, or when a worker of the
        last one has died (its pool is broken, or soon will be, for every call)."""
        pool = self._pool
        if pool is not None and (pool._broken or not _all_alive(pool)):  # noqa: SLF001
            self._discard(pool)
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=heap.trim_forever
            )
        return self._pool


def _all_alive(pool: ProcessPoolExecutor) -> bool:
    """Whether every process the pool started still runs (reaps any that ended)."""
    return all(process.is_alive() for process in (pool._processes or {}).values())  # noqa: SLF001


def _stop(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's processes and let it go: a worker told to stop politely would finish
    its call first, and one blocked writing its answer to a parent that is gone never
    finishes."""
    for process in list((pool._processes or {}).values()):  # noqa: SLF001
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
