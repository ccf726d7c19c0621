"""``python -m bench.batch``: the batch job against the service and the in-process limit.

On ``--count`` photos of ``--source`` (half cats, half dogs, linked into
``data/batch/photos-N``), one after the other: the in-process limit (decode + model, no
Ray, in a subprocess), ``python -m batch`` with Ray embedded on ``--small`` photos and on
all, the same job on a two-node Ray cluster on this machine, the service with
``--clients`` closed-loop clients, the in-process limit again. Peak RSS sums every process
of a run (``TreeMemory``); ``other cores`` is the CPU the rest of the machine used
meanwhile. (The estimate for 10 million files, with Ray's per-task overhead, is in
docs/batch.md, measured at commit ef329f7.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.batch_measure import TreeMemory, in_process_limit, service_rate
from bench.harness import ROOT, markdown, new_report, table, write_report
from servicekit.ray_cluster import local_cluster

DATA = ROOT / "data" / "batch"
RUNS = ROOT / "runs" / "batch"


def photo_folder(source: Path, count: int) -> Path:
    """``data/batch/photos-<count>``: links to the first count/2 cats and dogs by number."""
    folder = DATA / f"photos-{count}"
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for label in ("cat", "dog"):
        for number in range(count // 2):
            link = folder / f"{label}.{number}.jpg"
            if not link.exists():
                link.symlink_to((source / f"{label}.{number}.jpg").resolve())
    return folder


def run_job(
    folder: Path, name: str, env: dict[str, str], others: list[int], batch: int
) -> dict[str, Any]:
    """``python -m batch`` on ``folder`` as its own process: its summary, wall time, peak RSS
    of it and its descendants plus the ``others`` process trees (a cluster's nodes)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    out, summary = RUNS / f"bench-{name}.parquet", RUNS / f"bench-{name}.json"
    command = [sys.executable, "-m", "batch", str(folder), "--output", str(out)]
    command += ["--no-progress", "--summary-json", str(summary), "--batch-size", str(batch)]
    started = time.perf_counter()
    with open(RUNS / f"bench-{name}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        with TreeMemory([process.pid, *others]) as memory:
            code = process.wait()
    if code != 0:
        raise RuntimeError(f"{name}: python -m batch exited {code}; see {log.name}")
    result = json.loads(summary.read_text())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    classifying = result["seconds"] - (result["first_row_s"] or 0.0)
    result["steady_files_per_s"] = round(result["files"] / classifying, 1) if classifying else None
    result["peak_rss_mb"] = round(memory.peak_mb, 1)
    result["other_cores"] = memory.other_cores
    print(f"  {name}: {result['files_per_s']} files/s, {result['peak_rss_mb']} MB", flush=True)
    return result


def limit_subprocess(model: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``in_process_limit`` in a fresh process (its own peak RSS)."""
    out = RUNS / "bench-limit.json"
    command = [sys.executable, "-m", "bench.batch", "--limit-only", str(out)]
    command += ["--model", str(model), "--batch-size", str(args.batch_size), str(folder)]
    process = subprocess.Popen(command, cwd=ROOT)
    with TreeMemory([process.pid]) as memory:
        if process.wait() != 0:
            raise RuntimeError(f"the in-process limit exited {process.returncode}")
    return {**json.loads(out.read_text()), "other_cores": memory.other_cores}


def both_limits(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The limit measured before the jobs and after the service: their mean (this machine's
    speed drifts over minutes, and others' work lands on it), both kept."""
    rates = {"before": before["files_per_s"], "after": after["files_per_s"]}
    both = {k: max(before[k], after[k]) for k in ("peak_rss_mb", "other_cores")}
    return {"files_per_s": round(sum(rates.values()) / 2, 1)} | both | rates


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, in order; the report."""
    from batch.job import model_folder

    model = model_folder(args.model).resolve()
    folder, small = photo_folder(args.source, args.count), photo_folder(args.source, args.small)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CATDOG_"))}
    report = new_report("bench.batch", sys.argv[1:], files=args.count)
    report["model"] = str(model)
    print("in-process limit", flush=True)
    limit_before = limit_subprocess(model, folder, args)
    print(f"  {limit_before}\nbatch job, embedded", flush=True)
    report["embedded_small"] = run_job(small, f"embedded-{args.small}", env, [], args.batch_size)
    report["embedded"] = run_job(folder, f"embedded-{args.count}", env, [], args.batch_size)
    print("batch job, two-node cluster", flush=True)
    with local_cluster(nodes=2, cpus=1) as cluster:
        nodes, name = [p.pid for p in cluster.processes], f"cluster-{args.count}"
        report["cluster"] = run_job(folder, name, env | cluster.env, nodes, args.batch_size)
    print(f"service, {args.clients} clients", flush=True)
    report["service"] = service_rate(model.parent, sorted(folder.iterdir()), args.clients)
    print(f"  {report['service']}\nin-process limit, again", flush=True)
    report["limit"] = both_limits(limit_before, limit_subprocess(model, folder, args))
    print(f"  {report['limit']}", flush=True)
    return report


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown report."""
    limit, embedded = report["limit"], report["embedded"]
    rows = [
        {"run": f"batch job, embedded ({args.small} files)", **report["embedded_small"]},
        {"run": "batch job, embedded", **embedded},
        {"run": "batch job, two-node cluster on this machine", **report["cluster"]},
        {"run": f"the service at {args.clients} clients", **report["service"]},
        {"run": "decode + model in one process, no Ray", **limit},
    ]
    columns = [("run", "run"), ("files/s", "files_per_s"), ("first row s", "first_row_s")]
    columns += [("files/s after it", "steady_files_per_s"), ("wall s", "wall_s")]
    columns += [("driver CPU s", "driver_cpu_s"), ("peak RSS MB", "peak_rss_mb")]
    columns += [("other cores", "other_cores")]
    cores = report["environment"]["cpus"]
    of_limit = embedded["files_per_s"] / limit["files_per_s"]
    driver_ms = embedded["driver_cpu_s"] / embedded["files"] * 1000
    of_service = embedded["files_per_s"] / report["service"]["files_per_s"]
    body = [
        *table(rows, columns, text=("run",)),
        "",
        f"- Embedded job / in-process limit: **{of_limit:.0%}** (the limit: "
        f"{limit['before']} files/s before the jobs, {limit['after']} after the service).",
        "- `other cores`: CPU the rest of the machine used during the run, in cores.",
        f"- Embedded job / service req/s: **{of_service:.2f}×** (service statuses: "
        f"{report['service']['statuses']}).",
        f"- Files per node on the cluster: {report['cluster']['files_by_node']}.",
        f"- Errors by reason (embedded): {embedded['errors_by_reason'] or 'none'}.",
        "",
        f"One driver lists, hands out and writes every file: {driver_ms:.3f} ms of its CPU "
        f"per file here, so one job tops out near {1000 / driver_ms:,.0f} files/s whatever "
        "the number of nodes.",
    ]
    about = (
        f"{args.count} photos of `{args.source}`; model `{report['model']}`; "
        f"{cores} cores; one run at a time, under the heavy lock."
    )
    return markdown("The batch job on Ray Data", report, about, body)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = harness.parser("batch", __doc__, "batch.md", model=False)
    parser.add_argument("--source", type=Path, default=ROOT / "data" / "raw" / "train")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--model", type=Path, help="default: the newest under models/catdog")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("folder", nargs="?", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with ``--limit-only``, the in-process limit alone)."""
    args = parse(argv)
    if args.limit_only:
        files = sorted(args.folder.iterdir())
        result = in_process_limit(args.model, files, args.batch_size, os.cpu_count() or 1)
        args.limit_only.write_text(json.dumps(result))
        return
    report = run(args)
    write_report(report, render(report, args), args.out)


if __name__ == "__main__":
    main()
