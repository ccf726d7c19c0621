"""A Ray cluster of several nodes on this machine, started with Ray's own ``ray start``.

``local_cluster(nodes=2, cpus=1)`` runs ``ray start --head --block`` and then
``ray start --address ... --block`` for each further node, each with ``cpus`` CPUs,
its own temporary folder and no dashboard, each started once the one before it says
so, and yields (once ``ray status`` lists them all) a ``Cluster`` whose ``env``
makes a process join it (``RAY_ADDRESS`` and a token of this cluster's own: Ray's
token authentication, ``RAY_AUTH_MODE=token``). ``--block`` keeps each ``ray start``
in the foreground; ending it (SIGTERM to that one process id) stops that node's
processes, so nothing is stopped by name. Shared by ``tests/batch`` and the
benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from servicekit.process import free_port

RAY = str(Path(sys.executable).with_name("ray"))
JOIN_TIMEOUT = 120.0
STARTED = "Ray runtime started."  # what ``ray start`` prints once its node runs


@dataclass
class Cluster:
    """A running local cluster: its address, the environment that joins it, its nodes."""

    address: str
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


def _ray_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    # A node told to stop (SIGTERM) first drains for up to this many seconds (Ray's default
    # 30): it is stopped after its jobs are done, so there is nothing to wait for.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return env


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus: int = 1) -> Iterator[Cluster]:
    """Start a head and ``nodes - 1`` more nodes on 127.0.0.1; stop them all on exit.

    Ray's temporary folder is a new one under the system's (``/tmp``): its socket paths
    must stay within the 107 bytes a Unix socket's path may have."""
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = _ray_env(secrets.token_hex(32))
    cluster = Cluster(address, {**env, "RAY_ADDRESS": address})
    common = ["--block", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1"]
    try:
        for node in range(nodes):
            if node == 0:
                args = ["--head", f"--port={port}", "--include-dashboard=false"]
                args += [f"--temp-dir={temp}", "--disable-usage-stats"]
            else:
                args = [f"--address={address}"]
            log = temp.with_name(f"{temp.name}-node{node}.log")
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [RAY, "start", *args, *common], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            cluster.processes.append(process)
            cluster.logs.append(log)
            wait_for_start(process, log)  # the next node joins the head's GCS, up by now
        wait_for_nodes(cluster, nodes)  # each registered: a job sees all their CPUs
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            process.terminate()
        for process in reversed(cluster.processes):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(temp, ignore_errors=True)
        for log in cluster.logs:  # beside the folder: a failed start quotes its log
            log.unlink(missing_ok=True)


def wait_for_start(process: subprocess.Popen, log: Path, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until ``ray start`` has printed ``STARTED`` (its node's processes run): a look
    at its log every 0.1 s, where each ``ray status`` costs a Python start importing Ray."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if STARTED in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited ({process.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"ray start did not start within {timeout:.0f} s:\n{log.read_text()}")


def wait_for_nodes(cluster: Cluster, count: int, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until ``ray status`` lists ``count`` alive nodes (``RuntimeError`` if not)."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        for process, log in zip(cluster.processes, cluster.logs):
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited ({process.returncode}):\n{log.read_text()}")
        result = subprocess.run(
            [RAY, "status", f"--address={cluster.address}"],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = result.stdout
        if result.returncode == 0 and alive_nodes(status) >= count:
            return
        time.sleep(1.0)
    raise RuntimeError(f"{count} Ray nodes not up after {timeout:.0f} s:\n{status}")


def alive_nodes(status: str) -> int:
    """The number of active nodes in ``ray status`` output (one ``1 node_...`` line each)."""
    lines = status.split("Active:", 1)[-1].split("Pending:", 1)[0].splitlines()
    return sum(1 for line in lines if line.strip().startswith("1 node_"))
