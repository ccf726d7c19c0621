"""The service as tests and benchmarks drive it: a real process and its ``/metrics``.

Shared by ``tests/`` and ``bench/`` (neither imports the other): ``process``
starts and stops ``python -m app`` the way every documented command does;
``metrics`` parses Prometheus text and picks values that must exist.
"""

from servicekit.metrics import Metrics, Sample, mean, parse_metrics, read_metrics, samples, value
from servicekit.process import (
    READY_TIMEOUT,
    ROOT,
    STOP_GRACE,
    Server,
    ServerError,
    cpu_seconds,
    descendants,
    describe_exit,
    free_port,
    memory_mb,
    pin_to,
    proc_status_kb,
    server_command,
    server_env,
    slug,
    split_cpus,
    start_uvicorn,
    stop,
    uvicorn_server,
    wait_ready,
)

__all__ = [
    "READY_TIMEOUT",
    "ROOT",
    "STOP_GRACE",
    "Metrics",
    "Sample",
    "Server",
    "ServerError",
    "cpu_seconds",
    "descendants",
    "describe_exit",
    "free_port",
    "mean",
    "memory_mb",
    "parse_metrics",
    "pin_to",
    "proc_status_kb",
    "read_metrics",
    "samples",
    "server_command",
    "server_env",
    "slug",
    "split_cpus",
    "start_uvicorn",
    "stop",
    "uvicorn_server",
    "value",
    "wait_ready",
]
