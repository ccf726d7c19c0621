"""``python -m bench serve_instructions``: the instructions the server runs per request,
by mode, counted by callgrind: a cost that the machine's other load does not move.

Why a count beside ``bench serve``'s req/s: on a shared machine a 15 s level of req/s
moves as the host's load changes, by more than the few percent a setting such as the
operations layer costs (16 rounds of two modes at 0d11d38: −32.9% to +19.6% a round).
Valgrind's callgrind counts the instructions the process runs, whatever else the
machine does: the same mode's counts differed by 0.07% between runs, and the
model's count by nothing at all.

Each run starts ``python -m app`` (uvicorn's access line on, as a user starts it)
under ``valgrind --tool=callgrind`` with instrumentation off, sends
``--warmup-requests`` requests, turns instrumentation on (``callgrind_control -i
on``), sends ``--requests`` requests from ``--clients`` clients (the same photos in
the same order in every run: the fixtures and ``--images``), turns it off, and
divides the instructions counted by the requests. The runs of each ``--repeat``
go ``--parallel`` at a time: a count does not depend on the cores it shares.

What the count leaves out, and why these settings:

- The kernel's work (system calls: sockets, log writes) is not counted, only the
  process's own instructions.
- Instructions are not time: a cache miss or a lock wait costs time, not
  instructions. The garbage collector's walks are such misses: raising its young
  threshold (``app.core.heap``) took the collector's time from 105-130 µs to
  2-10 µs a request (~1% of the server's CPU), and the count by 0.07%. Read the count
  beside ``bench serve``'s req/s, not instead of it.
- Valgrind runs one thread at a time and shows the program no AVX-512, so the model
  runs its AVX2 kernels. ``inference_threads`` is 1 unless a mode says otherwise,
  because a thread pool's spin waits would count as instructions.
- Each run's count is split by the library that ran the instructions: the model's
  runtime (LiteRT or TensorFlow), image decoding (Pillow and its codecs), and the
  rest (the interpreter running the service, the C library, numpy, uvloop, ...).
  A setting of the service shows in the rest; the model's count depends on the
  vector instructions valgrind offers, so compare the rest across modes.
- Batches form as the requests arrive, which valgrind slows ~50 times; the report
  gives each run's mean batch, to check that the modes batched alike.
- Work on a timer counts as if requests took valgrind's time: the batch span
  processor's export every 5 s, the payload log's 0.2 s gathering, the service's
  idle timers run ~50 times as often per request as under real load. Tracing one
  request in ten counted +0.81 M a request; not recording any, +0.18 M, and
  recording all, +2.19 M, which at one in ten makes +0.38 M without the timer.

    .venv/bin/python -m bench serve_instructions --modes off,sampled \\
        --mode off:log_format=text --mode sampled:api_keys_file=...,log_format=json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from bench.clients import photo_files
from bench.harness import (
    ROOT,
    Server,
    free_port,
    named_settings,
    parse_metrics,
    server_command,
    server_env,
    stop,
    wait_ready,
)
from bench.serve_load import batch_counters, post_image, split_mode

READY_TIMEOUT_S = 900.0  # start-up under valgrind, two at once on two cores: ~1-3 minutes
STOP_GRACE_S = 120.0  # shutting down under valgrind, writing the last dump
NAME = re.compile(r"c?ob=\((\d+)\)(?: (.*))?")  # callgrind's compressed object names
# Where each group's instructions run, by the file name of the shared object.
GROUPS = {
    "model": re.compile(r"ai_edge_litert|tflite|tensorflow|xnnpack", re.IGNORECASE),
    "decode": re.compile(r"/PIL/|pillow\.libs|libjpeg|libpng|libwebp|libopenjp|libtiff"),
}


def by_group(text: str) -> dict[str, int]:
    """The instructions of a callgrind dump by group (``GROUPS``, else ``rest``): each
    cost line's own instructions, not the inclusive cost that follows a ``calls=``."""
    names: dict[str, str] = {}
    own: dict[str | None, int] = {}
    current, after_call = None, False
    for line in text.splitlines():
        if line.startswith(("ob=", "cob=")):
            number, name = NAME.match(line).groups()  # type: ignore[union-attr]
            names[number] = name or names.get(number, "")
            current = number if line.startswith("ob=") else current
        elif line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if not after_call and len(fields) > 1:
                own[current] = own.get(current, 0) + int(fields[1])
            after_call = False
    groups = dict.fromkeys([*GROUPS, "rest"], 0)
    for number, count in own.items():
        name = names.get(number or "", "")
        found = [g for g, pattern in GROUPS.items() if pattern.search(name)]
        groups[found[0] if found else "rest"] += count
    return groups


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = harness.parser("serve_instructions", __doc__, out="serve-instructions.md")
    add = p.add_argument
    add("--images", type=Path, default=ROOT / "data" / "train", help="photos after the fixtures")
    add("--n-images", type=int, default=200, help="photos of --images used, cats and dogs in turn")
    add("--requests", type=int, default=200, help="requests counted per run")
    add("--warmup-requests", type=int, default=40, help="requests sent first, not counted")
    add("--clients", type=int, default=16, help="concurrent clients")
    add("--repeat", type=int, default=2, help="runs of each mode")
    add("--parallel", type=int, default=2, help="runs at once")
    add("--modes", default="off,on", help="mode names, in order (the first is the baseline)")
    add("--mode", type=named_settings, action="append", default=[], metavar="NAME:SETTING=VALUE",
        help="a mode's CATDOG_ settings (OTEL_* names passed as they are)")  # fmt: skip
    add("--header", action="append", default=[], metavar="NAME:VALUE", help="sent by clients")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.mode_settings = {"on": {}, "off": {"max_batch_size": 1}, **dict(args.mode)}
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(args.modes) - set(args.mode_settings):
        p.error(f"unknown modes {sorted(unknown)}; define them with --mode")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        p.error("valgrind is not installed (Debian: apt-get install valgrind)")
    args.headers = harness.header_values(args.header)
    return args


def mode_env(settings: dict[str, str], model_dir: Path) -> dict[str, str]:
    """The server's environment for a mode (``bench.serve_load.split_mode``), with one
    inference thread unless the mode says otherwise."""
    otel, catdog = split_mode({"inference_threads": "1"} | settings)
    return server_env(model_dir, otel, **catdog)


async def send(url: str, bodies: list[bytes], headers: dict[str, str], clients: int) -> dict:
    """POST ``bodies`` to ``/predict`` in order from ``clients`` clients; outcomes counted."""
    queue = iter(enumerate(bodies))
    outcomes: Counter[int | str] = Counter()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=600.0, headers=headers) as http:
            for i, body in queue:
                outcomes[await post_image(http, f"{url}/predict", (f"photo{i}.jpg", body))] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return dict(outcomes)


def batches(url: str) -> tuple[float, float]:
    """(sum, count) of ``catdog_batch_size`` from the server's ``/metrics``."""
    return batch_counters(parse_metrics(httpx.get(f"{url}/metrics", timeout=120.0).text))


def control(pid: int, *command: str) -> None:
    """``callgrind_control COMMAND PID``; fails unless valgrind answers OK."""
    done = subprocess.run(
        ["callgrind_control", *command, str(pid)], capture_output=True, text=True, check=False
    )
    if "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control {' '.join(command)}: {done.stdout}{done.stderr}")


def run_once(mode: str, repeat: int, bodies: list[bytes], args: argparse.Namespace) -> dict:
    """One server of ``mode`` under callgrind: instructions per counted request."""
    port, work = free_port(), Path(tempfile.mkdtemp(prefix=f"callgrind-{mode}-"))
    command = [
        "valgrind", "--tool=callgrind", "--vgdb=yes", "--instr-atstart=no",
        f"--callgrind-out-file={work / 'callgrind.out'}",
        *server_command(port, access_log=True),
    ]  # fmt: skip
    env = mode_env(args.mode_settings[mode], args.model_dir)
    with open(work / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, port, work / "server.log")
    try:
        wait_ready(server, READY_TIMEOUT_S)
        asyncio.run(send(server.url, bodies[: args.warmup_requests], args.headers, args.clients))
        before = batches(server.url)
        control(process.pid, "-i", "on")
        counted = bodies[args.warmup_requests :]
        statuses = asyncio.run(send(server.url, counted, args.headers, args.clients))
        control(process.pid, "-i", "off")
        after = batches(server.url)
        control(process.pid, "-d")
    finally:
        stop(server, STOP_GRACE_S)
    groups = dict.fromkeys([*GROUPS, "rest"], 0)
    for dump in work.glob("callgrind.out*"):
        for group, count in by_group(dump.read_text(errors="replace")).items():
            groups[group] += count
    shutil.rmtree(work, ignore_errors=True)
    calls, n = after[1] - before[1], len(counted)
    return {
        "mode": mode,
        "run": repeat,
        "requests": n,
        "statuses": statuses,
        "mean_batch": round((after[0] - before[0]) / calls, 2) if calls else None,
        "instructions": groups,
        "m_per_request": round(sum(groups.values()) / n / 1e6, 3),
        **{f"m_{group}": round(count / n / 1e6, 3) for group, count in groups.items()},
    }


def summary(rows: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """Each mode's mean instructions per request, in all and in the rest (neither the
    model nor decoding), against the first mode's; the spread of its runs in all."""

    def mean(mode: str, key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["mode"] == mode)

    out = []
    for m in modes:
        own = [r["m_per_request"] for r in rows if r["mode"] == m]
        spread = (max(own) - min(own)) / mean(m, "m_per_request") * 100
        row: dict[str, Any] = {"mode": m, "runs": len(own), "spread": f"{spread:.2f}%"}
        for key in ("m_per_request", "m_rest"):
            row[key] = round(mean(m, key), 3)
            row[f"{key}_vs"] = f"{(mean(m, key) / mean(modes[0], key) - 1) * 100:+.2f}%"
        out.append(row)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Count each mode's instructions per request; write the report."""
    args = parse_args(argv)
    files = photo_files(args.images, args.n_images)
    total = args.warmup_requests + args.requests
    bodies = [files[i % len(files)].read_bytes() for i in range(total)]
    report = harness.new_report("bench.serve_instructions", args.argv, tool="callgrind")
    runs = [(mode, r + 1) for r in range(args.repeat) for mode in args.modes]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda run: run_once(*run, bodies, args), runs))
    for row in rows:
        count = f"{row['m_per_request']} M instructions per request"
        print(f"  [{row['mode']} run {row['run']}] {count}, mean batch {row['mean_batch']}")
    report |= {"settings": {m: args.mode_settings[m] for m in args.modes}, "rows": rows}
    report["summary"] = summary(rows, args.modes)
    spelt = {m: ", ".join(f"{k}={v}" for k, v in s.items()) for m, s in report["settings"].items()}
    named = "; ".join(f"`{m}` = {spelt[m] or 'the defaults'}" for m in args.modes)
    about = (
        f"{report['started']}; {args.requests} requests counted per run after "
        f"{args.warmup_requests} uncounted, {args.clients} clients, {len(files)} photos in "
        f"turn; `inference_threads=1` unless a mode sets it. Modes: {named}."
    )
    columns = [("mode", "mode"), ("run", "run"), ("requests", "requests")]
    columns += [("mean batch", "mean_batch"), ("M instructions per request", "m_per_request")]
    columns += [("model", "m_model"), ("decode", "m_decode"), ("rest", "m_rest")]
    body = [*harness.table(rows, columns, {"mode"}), ""]
    columns = [("mode", "mode"), ("runs", "runs"), ("M per request, all", "m_per_request")]
    columns += [("vs first", "m_per_request_vs"), ("spread of its runs", "spread")]
    columns += [("M per request, rest", "m_rest"), ("vs first", "m_rest_vs")]
    body += [*harness.table(report["summary"], columns, {"mode"}), ""]
    title = "Instructions per request (callgrind)"
    harness.write_report(report, harness.markdown(title, report, about, body), args.out)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
