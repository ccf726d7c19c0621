"""Markdown + JSON reports of the benchmarks; the service process and its metrics come
from :mod:`servicekit` (shared with the tests) and are re-exported here.

:func:`new_report` starts the dict every report holds (command line, start time,
CPUs, load average); :func:`table` renders markdown tables; :func:`write_report`
writes the markdown and the JSON beside it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from servicekit import (  # noqa: F401 - re-exported for the benchmarks
    READY_TIMEOUT,
    ROOT,
    STOP_GRACE,
    Metrics,
    Sample,
    Server,
    ServerError,
    cpu_seconds,
    describe_exit,
    free_port,
    mean,
    memory_mb,
    parse_metrics,
    pin_to,
    proc_status_kb,
    read_metrics,
    samples,
    server_command,
    server_env,
    slug,
    split_cpus,
    start_uvicorn,
    stop,
    uvicorn_server,
    value,
    wait_ready,
)

CACHE = ROOT / "bench" / ".cache"  # git-ignored: server logs, made images, untrained exports


# ---------------------------------------------------------------- reports


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine may be busy with other work)."""
    return [round(x, 2) for x in os.getloadavg()]


def command_line(module: str, argv: Sequence[str]) -> str:
    """How ``python -m module argv`` was started, as one shell line."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else "python"
    return shlex.join([python, "-m", module, *argv])


def new_report(module: str, argv: Sequence[str], **environment: Any) -> dict[str, Any]:
    """What every report starts with: the command, when, the CPUs, ``environment``, the load."""
    return {
        "command": command_line(module, argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {"cpus": os.cpu_count(), **environment, "loadavg_start": loadavg()},
    }


def cell(item: Any) -> str:
    """A table cell: a dash for missing values."""
    if item is None or (isinstance(item, float) and math.isnan(item)):
        return "–"
    return str(item)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    text: Iterable[str] = (),
    fmt: Callable[[Any], str] = cell,
) -> list[str]:
    """A markdown table of ``rows`` with (header, key) ``columns``.

    Columns whose key is in ``text`` are left-aligned, the others (numbers)
    right-aligned; ``fmt`` renders each value.
    """
    left = set(text)
    lines = ["| " + " | ".join(h for h, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if k in left else "---:" for _, k in columns) + "|")
    lines += ["| " + " | ".join(fmt(r.get(k)) for _, k in columns) + " |" for r in rows]
    return lines


def markdown(title: str, report: Mapping[str, Any], about: str, body: Sequence[str]) -> str:
    """A report's markdown: ``title``, the command that made it, ``about`` (how it ran),
    then ``body`` (tables and their notes)."""
    head = [f"# {title}", "", "```bash", str(report["command"]), "```", "", about, ""]
    return "\n".join([*head, *body])


def write_report(report: Mapping[str, Any], markdown: str, out: Path) -> None:
    """The markdown at ``out``, the raw numbers as JSON beside it; both named on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + markdown, flush=True)
    print(f"wrote {out} and {out.with_suffix('.json')}")
