"""CPU-bound work the event loop must not wait on, run in worker processes.

Parsing a large JSON body holds the GIL, so a thread would stall the event loop nearly
as much as parsing on it (``bench/results/json-offload.md``). ``Offload`` runs such calls
in ``workers`` processes started with ``spawn`` (``fork`` would copy TensorFlow's and
LiteRT's threads half-way) on first use. At most ``workers`` calls run at once, each
counted until it ends in its process even when its caller has gone. A worker that dies
during a call fails it with ``OffloadBrokenError``; one found dead before a call is
replaced first. ``close`` kills the workers (uvicorn ends on SIGTERM without ``atexit``).
Workers trim their heap every 2 s; a pool idle for ``IDLE_CLOSE_S`` is closed, since even
trimmed a worker holds 69 MB, and the next call starts one anew: 0.45 s for the first
JSON body against 4 ms after. Only public interfaces of ``concurrent.futures`` and
``multiprocessing`` are used: each worker reports its pid from the pool's initializer.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from app.core import heap

T = TypeVar("T")
IDLE_CLOSE_S = 30.0  # a pool unused this long is closed (see the module docstring)


class OffloadBrokenError(RuntimeError):
    """A worker process died during the call; the call may be retried."""


class Offload:
    """A lazily started pool of ``workers`` processes for picklable functions, closed
    again after ``idle_close_s`` seconds without a call."""

    def __init__(self, workers: int, idle_close_s: float = IDLE_CLOSE_S) -> None:
        self.workers = workers
        self.idle_close_s = idle_close_s
        self._pool: ProcessPoolExecutor | None = None
        self._pids: Any = None  # the current pool's queue of started workers' pids
        self._known: list[int] = []  # pids read from it so far
        self._slots = asyncio.Semaphore(max(workers, 1))
        self._started = 0  # calls handed over so far
        self._in_flight = 0  # calls not yet ended in their process

    @property
    def enabled(self) -> bool:
        """False with 0 workers: callers run the function themselves."""
        return self.workers > 0

    def processes(self) -> list[int]:
        """The process ids of the current pool's running workers (none before the first
        call, or once the pool was closed)."""
        if self._pool is None:
            return []
        while not self._pids.empty():
            self._known.append(self._pids.get())
        alive = {child.pid for child in multiprocessing.active_children()}
        return [pid for pid in self._known if pid in alive]

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
        self._started += 1
        self._in_flight += 1
        call.add_done_callback(self._ended)
        try:
            return await asyncio.shield(call)
        except BrokenProcessPool:
            self._discard(pool)
            raise OffloadBrokenError("a worker process died during the call") from None

    def _ended(self, call: asyncio.Future[Any]) -> None:
        """A call ended in its process: free its slot (and take its error, which a caller
        that left would never read); once none is left, close the pool if no call comes
        within ``idle_close_s``."""
        self._slots.release()
        self._in_flight -= 1
        if not call.cancelled():
            call.exception()
        if not self._in_flight:
            self._send_empty_call()
            started = self._started
            asyncio.get_running_loop().call_later(self.idle_close_s, self._close_idle, started)

    def _send_empty_call(self) -> None:
        """Send the pool a call that holds nothing. A ``ProcessPoolExecutor`` hands calls
        over through a ``multiprocessing.Queue`` whose feeder thread (CPython 3.11) keeps
        the last call it sent, pickled, until it sends the next: measured here, the idle
        main process kept 112 MB of one body after four 100 MB JSON bodies, for as long
        as no other call came."""
        if self._pool is not None:
            with contextlib.suppress(BrokenProcessPool, RuntimeError):  # broken, shut down
                self._pool.submit(int)

    def _close_idle(self, started: int) -> None:
        """Close the pool if no call was handed over since ``started`` calls."""
        if self._started == started and not self._in_flight:
            self.close()

    def close(self) -> None:
        """Kill the workers, calls in progress included."""
        if self._pool is not None:
            self._discard(self._pool)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Kill ``pool``'s workers, and forget it if it is still the current one (a call
        that failed late may name a pool already replaced)."""
        if self._pool is pool:
            workers = self.processes()
            self._pool, self._known = None, []
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pool.shutdown(wait=False, cancel_futures=True)

    def _submit(
        self, function: Callable[..., T], args: tuple[Any, ...]
    ) -> tuple[ProcessPoolExecutor, asyncio.Future[T]]:
        """The call handed to a pool whose workers run. A pool that turns out broken as
        the call is handed over (its worker died a moment ago) is replaced and the call
        handed to the new one."""
        loop = asyncio.get_running_loop()
        for _ in range(2):
            pool = self._pool_now()
            try:
                return pool, loop.run_in_executor(pool, function, *args)
            except BrokenProcessPool:
                self._discard(pool)
        raise OffloadBrokenError("no worker process would start")

    def _pool_now(self) -> ProcessPoolExecutor:
        """The pool to submit to: a new one when there is none, or when a worker it
        started has died (its pool is broken, or soon will be, for every call)."""
        pool = self._pool
        if pool is not None and len(self.processes()) < len(self._known):
            self._discard(pool)
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pids = context.SimpleQueue()
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_started, initargs=(self._pids,)
            )
        return self._pool


def _started(pids: Any) -> None:
    """In a new worker: tell the parent its pid, and trim the heap every 2 s."""
    pids.put(os.getpid())
    heap.trim_forever()
