"""Where a request's CPU goes in the service: per thread from ``/proc``, per stage from py-spy.

It takes ``bench serve``'s options and runs the same load; over each measured window it
reads every server thread's CPU time and samples the Python stacks with py-spy
(``--nonblocking``, active samples only), then splits each thread's CPU over stages in
proportion to its samples (:data:`RULES`). bench/README.md has the method.

    .venv/bin/python -m bench serve_profile --model-dir models/catdog --runtimes litert \\
        --modes on --clients 1,64 --mix 0,1,0 --no-pin --py-spy /tmp/pyspy/bin/py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import CACHE, Server, cpu_seconds, markdown, new_report, table, write_report
from bench.serve import parse_args
from bench.serve_images import build_image_set
from bench.serve_load import Probe, bench_servers

# stage: function or file fragments; the first rule matching a frame names its stage. Frames
# are py-spy's "function (package/file.py)", tried innermost first.
RULES: dict[str, tuple[str, ...]] = {
    "model: invoke": ("invoke (ai_edge_litert",),
    "model: tensor in/out": ("ai_edge_litert",),
    "model: TensorFlow": ("tensorflow",),
    "decode: resize": ("resize (PIL",),
    "decode: JPEG decode": ("ImageFile.py", "draft (PIL"),
    "decode: to array, /255": ("scale (catdog", "__array_interface__ (PIL"),
    "decode: RGB/upright": ("to_rgb (catdog", "upright (catdog"),
    "decode: open + checks": ("PIL", "catdog/preprocessing"),
    "decode: pixel budget": ("hold (app/core/service",),
    "batch: stack": ("_stack_and_infer",),
    "batch: outputs to rows": ("infer_rows",),
    "result to the event loop": ("_call_set_state",),
    "thread wake-up (work queue, GIL)": ("concurrent/futures",),
    "tracing (OpenTelemetry)": ("opentelemetry", "app/ops/tracing", "app/core/observe"),
    "operations: keys, payload log": ("app/ops",),
    "access log": ("logging", "pythonjsonlogger"),
    "multipart parsing": ("multipart", "formparsers"),
    "metrics": ("prometheus_client",),
    "JSON response": ("json", "render (starlette", "serialize_response (fastapi"),
    "validation (pydantic)": ("pydantic",),
    "HTTP (uvicorn, httptools)": ("uvicorn/protocols",),
    "routing (FastAPI, Starlette)": ("fastapi", "starlette"),
    "service + batcher": ("app/",),
    "event loop: uvloop (sockets, callbacks)": ("asyncio", "uvloop", "uvicorn"),
}
STAGES = [(stage, fragment) for stage, fragments in RULES.items() for fragment in fragments]
GROUPS = {"MainThread": "event loop", "decode": "decode", "inference": "inference"}
THREAD = re.compile(r"^thread \((\d+)\)(?:: ([^;]*))?$")
DUMPED = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]*)"', re.MULTILINE)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid`` (``/proc/<pid>/task/<tid>/stat``)."""
    threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    used = {tid: cpu_seconds(pid, tid) for tid in threads}
    return {tid: seconds for tid, seconds in used.items() if seconds is not None}


def group_of(name: str | None) -> str:
    """The thread group of a Python thread name (None: a native thread)."""
    if name is None:
        return "native"
    return next((g for prefix, g in GROUPS.items() if name.startswith(prefix)), "other")


def stage_of(frames: Sequence[str]) -> str:
    """The stage of one stack (outermost frame first): its innermost frame a rule knows."""
    for frame in reversed(frames):
        for stage, fragment in STAGES:
            if fragment in frame:
                return stage
    return "unattributed"


def read_samples(path: Path) -> dict[int, Counter[str]]:
    """py-spy's raw output (``thread (tid): name;frame;...;frame count``): stages per thread."""
    per_thread: dict[int, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        match = THREAD.match(frames[0])
        if not match or not count.isdigit():
            continue
        per_thread.setdefault(int(match[1]), Counter())[stage_of(frames[1:])] += int(count)
    return per_thread


async def thread_names(py_spy: str, pid: int) -> dict[int, str]:
    """``py-spy dump``: the Python threads of ``pid`` by native id."""
    process = await asyncio.create_subprocess_exec(
        py_spy, "dump", "--pid", str(pid), "--nonblocking", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return {int(tid): name for tid, name in DUMPED.findall(out.decode(errors="replace"))}


def cpu_split(
    cpu: dict[int, float], names: dict[int, str], samples: dict[int, Counter[str]], seconds: float
) -> list[dict[str, Any]]:
    """Cores per (group, stage): each thread's CPU split in proportion to its samples."""
    cores: Counter[tuple[str, str]] = Counter()
    for tid, used in cpu.items():
        group = group_of(names.get(tid))
        stages = samples.get(tid) or Counter(
            {"model: runtime threads" if group == "native" else "unsampled": 1}
        )
        total = sum(stages.values())
        for stage, count in stages.items():
            cores[group, stage] += used / seconds * count / total
    return [
        {"group": group, "stage": stage, "cores": round(value, 3)}
        for (group, stage), value in sorted(cores.items(), key=lambda kv: -kv[1])
        if value >= 0.0005
    ]


def profiler(py_spy: str, rate: int) -> Probe:
    """A probe that splits the server's CPU over the measured window."""

    async def probe(server: Server, window: tuple[float, float]) -> dict[str, Any]:
        start, end = window
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        pid, out = server.process.pid, CACHE / "logs" / f"py-spy-{server.port}.txt"
        before, started = thread_cpu(pid), time.perf_counter()
        command = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        command += ["--duration", str(max(1, round(end - start))), "--threads", "--nonblocking"]
        spy = await asyncio.create_subprocess_exec(
            *command, "--nolineno", "-o", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after, seconds = thread_cpu(pid), time.perf_counter() - started
        await spy.wait()
        names = await thread_names(py_spy, pid)
        used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
        return {"split": cpu_split(used, names, read_samples(out), seconds), "threads": names}

    return probe


def split_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One load level's split with CPU ms per request and each stage's share."""
    split = row["probe"]["split"]
    total = sum(s["cores"] for s in split) or 1.0
    rate = row["req_per_s"] or float("nan")
    per_request = [
        {"ms_per_request": round(s["cores"] / rate * 1000, 2), "share": f"{s['cores'] / total:.0%}"}
        for s in split
    ]
    return [s | extra for s, extra in zip(split, per_request)] + [
        {"group": "total server", "cores": round(total, 3),
         "ms_per_request": round(total / rate * 1000, 2), "share": "100%"},
        {"group": "load generator (bench)", "cores": row["client_cores"],
         "ms_per_request": round((row["client_cores"] or 0) / rate * 1000, 2)},
    ]  # fmt: skip


def render(report: dict[str, Any]) -> str:
    """The markdown: per runtime, mode and client count, the CPU split."""
    columns = [("group", "group"), ("stage", "stage"), ("CPU cores", "cores")]
    columns += [("CPU ms per request", "ms_per_request"), ("share of server CPU", "share")]
    env, lines = report["environment"], []
    about = (
        f"{report['started']}; {env['cpus']} CPUs ({env['pinning']}), load average at start "
        f"{env['loadavg_start']}; {report['settings']['warmup']} s warm-up then "
        f"{report['settings']['duration']} s per client count, py-spy at "
        f"{report['settings']['rate']} Hz. See `bench/serve_profile.py` for the method."
    )
    for row in report["rows"]:
        lines += [
            f"## {row.get('runtime')}, batching {row['mode']}, {row['clients']} clients",
            "",
            f"{row['req_per_s']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
            f"mean batch {row['mean_batch']}; server {row['server_cores']} cores, "
            f"load generator {row['client_cores']}, rest of the machine {row['other_cores']}.",
            "",
            *table(split_rows(row), columns, {"group", "stage", "share"}),
            "",
        ]
    return markdown("Where a request's CPU goes", report, about, lines)


def add_options(p: argparse.ArgumentParser) -> None:
    """This module's own options, beside ``bench.serve``'s."""
    p.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")


def main(argv: Sequence[str] | None = None) -> None:
    """Profile every runtime, mode and client count; write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, add_options, "bench.serve_profile", __doc__)
    py_spy = shutil.which(args.py_spy)
    if py_spy is None:
        raise SystemExit(f"{args.py_spy}: not found; pip install py-spy and pass --py-spy PATH")
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    pinning = "client and server pinned apart" if args.server_cpus else "not pinned"
    report = new_report("bench.serve_profile", argv, pinning=pinning)
    report["settings"] = {"warmup": args.warmup, "duration": args.duration, "rate": args.rate}
    images = build_image_set(args)
    probe = profiler(py_spy, args.rate)
    configs = [(runtime, mode) for runtime in args.runtimes for mode in args.modes]
    rows = bench_servers(args.model_dir, configs, images, args, probe)
    report["rows"] = [row for config in configs for row in rows[config]]
    write_report(report, render(report), args.out)


if __name__ == "__main__":
    main()
