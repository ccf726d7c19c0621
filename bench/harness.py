"""Markdown + JSON reports of the benchmarks; the service process and its metrics come
from :mod:`servicekit` (shared with the tests) and are re-exported here.

:func:`new_report` starts the dict every report holds (command line, start time,
CPUs, load average); :func:`table` renders markdown tables; :func:`write_report`
writes the markdown and the JSON beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from servicekit import *  # noqa: F403 - the service process and its metrics, for the benchmarks
from servicekit import ROOT

CACHE = ROOT / "bench" / ".cache"  # git-ignored: server logs, made images, untrained exports


def parser(
    name: str, doc: str, out: str | None = None, model: bool = True
) -> argparse.ArgumentParser:
    """The command line every benchmark starts from: ``python -m bench NAME``, the first
    sentence of its docstring, ``--model-dir`` (the shipped models, unless ``model`` is
    false) and ``--out`` (``bench/results/<out>``, when given)."""
    first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0]
    p = argparse.ArgumentParser(prog=f"python -m bench {name}", description=first)
    if model:
        p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "catdog")
    if out:
        p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    return p


def ints(text: str) -> list[int]:
    """``"1,16,64"`` -> ``[1, 16, 64]`` (an argparse type)."""
    return [int(part) for part in text.split(",") if part.strip()]


def floats(text: str) -> list[float]:
    """``"0.78,0.2,0.02"`` -> ``[0.78, 0.2, 0.02]`` (an argparse type)."""
    return [float(part) for part in text.split(",") if part.strip()]


def named_settings(text: str) -> tuple[str, dict[str, str]]:
    """``"b8:max_batch_size=8,batch_timeout_ms=0"`` -> ``("b8", {"max_batch_size": "8", ...})``
    (an argparse type: a batching mode of ``serve``, a server of ``protocols``)."""
    name, _, settings = text.partition(":")
    pairs = [item.partition("=") for item in settings.split(",") if item.strip()]
    if not name.strip() or any(not key.strip() or not eq for key, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME:SETTING=VALUE[,...], got {text!r}")
    return name.strip(), {key.strip().lower(): val.strip() for key, _, val in pairs}


def header_values(items: Sequence[str]) -> dict[str, str]:
    """``--header NAME:VALUE`` options as the headers a client sends."""
    return {k.strip(): v.strip() for k, _, v in (item.partition(":") for item in items)}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine may be busy with other work)."""
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line for line in lines if line.startswith("model name")).split(":")[1].strip()
    return platform.processor() or platform.machine()


def stamp(model_dir: Path | None = None) -> dict[str, str]:
    """What a result is of: the commit (``-dirty`` with uncommitted changes), the model
    version (the highest in ``model_dir``, by default the shipped models/catdog, which the
    service serves) and the machine."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    folder = model_dir or ROOT / "models" / "catdog"
    versions = (
        [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    )
    cpus = os.cpu_count()  # the machine's, whatever this process is pinned to
    return {
        "commit": commit,
        "model_version": str(max(versions)) if versions else folder.name,
        "machine": f"{_cpu_model()}, {cpus} CPUs",
    }


def new_report(module: str, argv: Sequence[str], **environment: Any) -> dict[str, Any]:
    """What every report starts with: how ``python -m module argv`` was started (one shell
    line), when, its :func:`stamp`, the CPUs, ``environment``, the load."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else "python"
    return {
        "command": shlex.join([python, "-m", module, *argv]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stamp": stamp(),
        "environment": {"cpus": os.cpu_count(), **environment, "loadavg_start": loadavg()},
    }


def cell(item: Any) -> str:
    """A table cell: a dash for missing values."""
    return "–" if item is None or (isinstance(item, float) and math.isnan(item)) else str(item)


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
    """The markdown at ``out``, its stamp under the title, the raw numbers as JSON beside
    it; both named on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    title, _, rest = markdown.partition("\n")
    s, day = report.get("stamp") or stamp(), str(report.get("started", ""))[:10]
    line = f"_commit {s['commit']} · model version {s['model_version']} · {s['machine']} · {day}_"
    markdown = f"{title}\n\n{line}\n{rest}" if title.startswith("# ") else markdown
    out.write_text(markdown + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + markdown, flush=True)
    print(f"wrote {out} and {out.with_suffix('.json')}")
