"""A real service process on a free port: started as every documented command starts it.

:func:`server_command` is the one place that says how the service is started.
:func:`start_uvicorn` runs it on a free port with ``CATDOG_MODEL_DIR`` and
``CATDOG_<SETTING>`` variables (every other ``CATDOG_*`` variable of this
process removed), writing its output to a log file, optionally pinned to some
CPUs; :func:`wait_ready` polls ``/readyz`` and returns how long startup took;
:func:`stop` sends SIGTERM (SIGKILL after a grace period) and returns the exit
code; :func:`uvicorn_server` does all three around a block. :class:`Server`
reads the process's peak RSS and CPU time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 180.0  # model load + warm-up on a busy 2-core machine
STOP_GRACE = 30.0  # seconds between SIGTERM and SIGKILL


def server_command(port: int, *, access_log: bool = False) -> list[str]:
    """The command that starts the service on ``127.0.0.1:port`` (run from the repository root)."""
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1"]
    return command + ["--port", str(port)] + ([] if access_log else ["--no-access-log"])


def server_env(
    model_dir: Path, env: Mapping[str, str] | None = None, **settings: object
) -> dict[str, str]:
    """This process's environment without ``CATDOG_*``, plus the model folder, ``env``
    and ``CATDOG_<SETTING>`` for each of ``settings`` (which win over ``env``)."""
    result = {k: v for k, v in os.environ.items() if not k.startswith("CATDOG_")}
    result.update(CATDOG_MODEL_DIR=str(model_dir), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    result.update(env or {})
    result.update({f"CATDOG_{key.upper()}": str(value) for key, value in settings.items()})
    return result


def slug(path: Path) -> str:
    """A file-name-safe name for a model folder (server logs are named after it)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(path).strip("/")) or "model"


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(client cores, server cores): the first allowed core, and the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    if not pin or len(allowed) < 2:
        return None, None
    return {allowed[0]}, set(allowed[1:])


def pin_to(cpus: Iterable[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins a child process (all its future threads) to ``cpus``."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds a process (or one of its threads) has used so far
    (``/proc/<pid>/stat``, ``/proc/<pid>/task/<thread>/stat``); None once it is gone."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in kB (e.g. VmHWM, the peak RSS), None if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return None


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a running process in MB of 10^6 bytes, as the results
    files that size the pods count (``tests/deploy/measured.py``)."""
    values = {key: proc_status_kb(pid, key) for key in ("VmRSS", "VmHWM")}
    if None in values.values():
        raise ProcessLookupError(f"process {pid} is gone")
    return {key: kb * 1024 / 1e6 for key, kb in values.items() if kb is not None}


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs, as they are now (none once it is gone)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


class ServerError(RuntimeError):
    """The service exited or did not become ready; the message ends with its log."""


@dataclass
class Server:
    """A service process on ``127.0.0.1:port``; its output goes to ``log_path``."""

    process: subprocess.Popen
    port: int
    log_path: Path
    started: float = field(default_factory=time.perf_counter)  # perf_counter() at launch
    ready_s: float | None = None  # set by wait_ready

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory so far (``VmHWM``), in MB; None once it is gone."""
        kb = proc_status_kb(self.process.pid, "VmHWM")
        return None if kb is None else round(kb / 1024, 1)

    def cpu_seconds(self) -> float | None:
        """CPU seconds the process has used so far."""
        return cpu_seconds(self.process.pid)

    def log(self) -> str:
        """Everything the server wrote so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output, for error messages."""
        return "\n".join(self.log().splitlines()[-lines:])


def start_uvicorn(
    model_dir: Path,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cpus: Iterable[int] | None = None,
    access_log: bool = False,
    **settings: object,
) -> Server:
    """Start the service for ``model_dir`` with ``CATDOG_<SETTING>`` for each of ``settings``.

    ``env`` adds raw environment variables, ``cpus`` pins the process to those
    cores, ``access_log`` keeps uvicorn's per-request log. Returns at once; see
    :func:`wait_ready`.
    """
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            server_command(port, access_log=access_log),
            cwd=ROOT,
            env=server_env(model_dir, env, **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin_to(cpus),
        )
    return Server(process, port, log_path, started)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> float:
    """Seconds from launch until ``GET /readyz`` is 200 (also kept as ``server.ready_s``).

    Raises :class:`ServerError` if the process exits first or ``timeout`` passes.
    """
    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() - server.started < timeout:
            if server.process.poll() is not None:
                raise ServerError(
                    f"server exited with {server.process.returncode} before it was ready:\n"
                    f"{server.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{server.url}/readyz").status_code == 200:
                    server.ready_s = round(time.perf_counter() - server.started, 2)
                    return server.ready_s
            time.sleep(0.05)
    raise ServerError(f"server not ready after {timeout:.0f} s:\n{server.log_tail()}")


def stop(server: Server, grace: float = STOP_GRACE) -> int:
    """SIGTERM (uvicorn drains and shuts down), SIGKILL after ``grace`` s; the return code.

    uvicorn re-raises the SIGTERM once it has shut down, so a clean stop returns -15.
    """
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def describe_exit(code: int | None) -> str:
    """A return code in words: ``"exit code 1"``, ``"SIGTERM"`` (a signal), ``"running"``."""
    if code is None:
        return "running"
    return signal.Signals(-code).name if code < 0 else f"exit code {code}"


@contextlib.contextmanager
def uvicorn_server(
    model_dir: Path,
    log_path: Path,
    *,
    ready_timeout: float = READY_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cpus: Iterable[int] | None = None,
    access_log: bool = False,
    **settings: object,
) -> Iterator[Server]:
    """A ready server (see :func:`start_uvicorn`) for the duration of the block, then stopped."""
    server = start_uvicorn(
        model_dir, log_path, env=env, cpus=cpus, access_log=access_log, **settings
    )
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        stop(server)
