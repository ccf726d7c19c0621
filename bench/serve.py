"""Serving benchmark: the real service under closed-loop load, against the in-process limit.

Per model folder, runtime (``--runtimes``) and batching mode (``on``, ``off``, ``--mode``)
it starts a server (``bench.serve_load``), then runs each client count against each
server in turn; before and after, the in-process limit (``bench.serve_limit``). The
request mix is ``bench.serve_images``'s. bench/README.md says what every column means.

    .venv/bin/python -m bench serve --model-dir models/catdog --runtimes litert,tensorflow \\
        --modes on --mix 0,1,0 --no-pin --out bench/results/runtimes-serve.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness, sizing
from bench.harness import floats, ints, named_settings, split_cpus, table
from bench.serve_images import GROUPS, build_image_set
from bench.serve_limit import combine_in_process, measure_in_process, measure_in_process_pinned
from bench.serve_load import MODES, bench_servers
from catdog.runtimes import latest_version

RUNTIMES = ("auto", "litert", "tensorflow")  # CATDOG_RUNTIME values


def parse_args(
    argv: Sequence[str] | None = None,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
    prog: str = "bench.serve",
    description: str | None = __doc__,
) -> argparse.Namespace:
    """The command line of ``bench serve`` and of the benchmarks built on its load
    (``extend`` adds a module's own options)."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=(description or "")[:80])
    add = p.add_argument
    add("--model-dir", type=Path, required=True, help="model base folder")
    add("--model-dir2", type=Path, help="a second model base folder")
    add("--clients", type=ints, default=[1, 16, 64, 256], help="e.g. 1,16,64")
    add("--duration", type=float, default=20.0, help="measured seconds per level")
    add("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    add("--rounds", type=int, default=1, help="times each client count runs against each mode")
    fresh = "start each server right before its level, stop it after (default: all up throughout)"
    add("--fresh", action="store_true", help=fresh)
    add("--modes", default="on,off", help="batching modes: on,off and --mode names")
    mode = "a mode of its own (repeatable), e.g. b8:max_batch_size=8; OTEL_* names are "
    add("--mode", type=named_settings, action="append", default=[], metavar="NAME:SETTING=VALUE",
        help=mode + "passed to the server as they are")  # fmt: skip
    add("--runtimes", default="", help="CATDOG_RUNTIME per server, e.g. litert,tensorflow")
    add("--server-env", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    add("--header", action="append", default=[], metavar="NAME:VALUE", help="sent by clients")
    add("--images", type=Path, default=Path("data/split/test"))
    add("--n-images", type=int, default=200, help="original photos used")
    add("--n-medium", type=int, default=50, help="480x320 versions made")
    add("--n-huge", type=int, default=4, help="12MP (4000x3000) versions made")
    add("--mix", type=floats, default=[0.78, 0.20, 0.02], help="share of original,480x320,12MP")
    add("--batch-sizes", type=ints, default=[1, 8, 32, 64], help="in-process")
    add("--inproc-duration", type=float, help="s per in-process row (default duration/4, 1..10)")
    add("--no-inproc", action="store_true", help="skip the in-process limit")
    add("--timeout", type=float, default=60.0, help="per-request timeout, s")
    add("--ready-timeout", type=float, default=300.0, help="startup timeout, s")
    add("--access-log", action=argparse.BooleanOptionalAction, default=True)
    add("--seed", type=int, default=0)
    pin = "client on the first core, server and in-process limit on the others"
    add("--pin", action=argparse.BooleanOptionalAction, default=True, help=pin)
    add("--inproc-only", type=Path, help=argparse.SUPPRESS)  # internal: JSON path
    add("--out", type=Path, default=Path(f"bench/results/{prog.split('.')[-1]}.md"))
    if extend is not None:
        extend(p)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the in-process subprocess
    args.mode_settings = {**MODES, **dict(args.mode)}
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.modes += [name for name, _ in args.mode if name not in args.modes]
    if unknown := set(args.modes) - set(args.mode_settings):
        p.error(f"unknown modes {sorted(unknown)}; choose from {sorted(args.mode_settings)}")
    args.headers = harness.header_values(args.header)
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] or [None]
    if unknown := set(args.runtimes) - {None, *RUNTIMES}:
        p.error(f"unknown runtimes {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")
    if len(args.mix) != len(GROUPS) or min(args.mix) < 0 or sum(args.mix) <= 0:
        p.error(f"--mix needs {len(GROUPS)} non-negative shares ({','.join(GROUPS)})")
    args.mix = [m / sum(args.mix) for m in args.mix]
    if args.inproc_duration is None:
        args.inproc_duration = min(10.0, max(1.0, args.duration / 4))
    args.client_cpus, args.server_cpus = split_cpus(args.pin)
    return args


def model_info(model_dir: Path, runtime: str | None) -> dict[str, Any]:
    """The served version of ``model_dir``, what it is; fails fast on a folder the
    service could not serve."""
    try:
        latest = latest_version(model_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"{model_dir}: no version to serve ({exc})") from exc
    if runtime == "litert" and not (latest / "model.tflite").is_file():
        raise SystemExit(f"{latest}: no model.tflite, so no LiteRT runtime to measure")
    meta = json.loads((latest / "metadata.json").read_text())
    keys = ("architecture", "image_size", "parameters")
    return {"version": latest.name, **{k: meta.get(k) for k in keys}}


SERVICE = [("batching", "mode"), ("clients", "clients"), ("req/s", "req_per_s")]
SERVICE += [(f"{q} ms", f"{q}_ms") for q in ("p50", "p90", "p99")]
SERVICE += [("503", "status_503"), ("other", "other_status"), ("socket", "socket_errors")]
SERVICE += [("timeouts", "timeouts"), ("mean batch", "mean_batch")]
SERVICE += [(f"{who} CPU cores", f"{who}_cores") for who in ("server", "client", "other")]
SERVICE += [("idle RSS MB", "idle_rss_mb"), ("peak RSS MB", "peak_rss_mb")]
SERVICE += [("ready s", "ready_s"), ("efficiency", "efficiency")]
LIMIT = [("batch", "batch"), ("before", "before"), ("after", "after")]
LIMIT += [("images/s", "images_per_s"), ("model only images/s", "model_only_images_per_s")]


def model_section(result: dict[str, Any]) -> list[str]:
    """One model and runtime: the service table, latency by image size, the limit."""
    info, inproc, rows = result["model"], result["in_process"], result["service"]
    served = sorted({r["runtime"] for r in rows if r.get("runtime")})
    lines = [f"## `{result['model_dir']}` on {result['runtime'] or 'the default runtime'}", ""]
    lines += [
        f"Version {info['version']}, {info['architecture']}, input {info['image_size']}, "
        f"{info['parameters']} parameters; served with {' and '.join(served) or '?'}.",
        "",
    ]
    rounds = [("round", "round")] if any("round" in r for r in rows) else []
    lines += [*table(rows, [*SERVICE[:2], *rounds, *SERVICE[2:]], {"mode"}), ""]
    lines += against_first(rows)
    lines += ["p50 / p99 ms by image size:", ""]
    sized = [
        {"mode": r["mode"], "clients": r["clients"], "round": r.get("round")}
        | {g: f"{v['p50_ms']} / {v['p99_ms']}" for g, v in r["by_image"].items()}
        for r in rows
    ]
    groups = [(g, g) for g in GROUPS if any(g in row for row in sized)]
    lines += [*table(sized, [*SERVICE[:2], *rounds, *groups], {"mode"}), ""]
    if inproc:
        best = inproc["best"]
        lines += [
            f"In-process limit ({inproc['runtime']}, {inproc['model_threads']} thread(s) "
            f"per model call, decode on {inproc['decode_threads']} threads overlapped): "
            f"**{best['images_per_s']} images/s** at batch {best['batch']}.",
            "",
        ]
        if served and served != [inproc["runtime"]]:
            lines += [
                f"**Not comparable: the service ran {served}, the limit {inproc['runtime']}.**",
                "",
            ]
        lines += [*table(inproc["rows"], LIMIT), ""]
    return lines


def against_first(rows: list[dict[str, Any]]) -> list[str]:
    """With ``--rounds``: each mode's req/s and server CPU per request against the first
    mode's in the same round and client count; the median and range over the rounds."""
    if not any("round" in r for r in rows):
        return []
    first = rows[0]["mode"]
    base = {(r["clients"], r["round"]): r for r in rows if r["mode"] == first}
    by_mode: dict[tuple[str, int], list[tuple[float, float | None]]] = {}
    for r in rows:
        b = base.get((r["clients"], r["round"]))
        if r["mode"] == first or b is None or not (r["req_per_s"] and b["req_per_s"]):
            continue
        cpu = None
        if r["server_cores"] and b["server_cores"]:
            cpu = (r["server_cores"] / r["req_per_s"]) / (b["server_cores"] / b["req_per_s"]) - 1
        speed = r["req_per_s"] / b["req_per_s"] - 1
        by_mode.setdefault((r["mode"], r["clients"]), []).append((speed, cpu))
    summary = []
    for (mode, clients), pairs in by_mode.items():
        speed = [p[0] for p in pairs]
        cpu = [p[1] for p in pairs if p[1] is not None]
        summary.append({
            "mode": mode,
            "clients": clients,
            "rounds": len(pairs),
            "median": f"{np.median(speed):+.1%}",
            "range": f"{min(speed):+.1%} to {max(speed):+.1%}",
            "past": sum(v < -0.05 for v in speed),
            "cpu": f"{np.median(cpu):+.1%}" if cpu else None,
        })  # fmt: skip
    columns = [("batching", "mode"), ("clients", "clients"), ("rounds", "rounds")]
    columns += [("req/s vs first, median", "median"), ("range", "range")]
    columns += [("rounds past −5%", "past"), ("server CPU per request vs first, median", "cpu")]
    about = f"Each round against `{first}` in the same round (median and range over the rounds):"
    return [about, "", *table(summary, columns, {"mode"}), ""]


def repeats(settings: dict[str, Any]) -> str:
    """How often each level ran, and whether its servers were new (old reports: once)."""
    rounds = settings.get("rounds", 1)
    times = f", {rounds} rounds (the modes' order flipping each level)" if rounds > 1 else ""
    return times + (", each server started for its level" if settings.get("fresh") else "")


def render(report: dict[str, Any]) -> str:
    """The whole report as markdown."""
    env, settings = report["environment"], report["settings"]
    mix = ", ".join(
        f"{g} {d['weight']:.0%} ({d['files']} files, {d['mean_kb']} KB mean)"
        for g, d in report["images"].items()
    )
    named = {
        m: ", ".join(
            f"`{'' if k.startswith('otel_') else 'CATDOG_'}{k.upper()}={v}`"
            for k, v in settings["mode_settings"].get(m, {}).items()
        )
        for m in settings["modes"]
    }
    modes = "; ".join(f"`{m}` = {named[m] or 'the service defaults'}" for m in named)
    about = (
        f"{report['started']}; {env['cpus']} CPUs ({env['pinning']}), load average "
        f"{env['loadavg_start']} at start, {env.get('loadavg_end')} at end; {settings['warmup']} s "
        f"warm-up then {settings['duration']} s per client count{repeats(settings)}; "
        f"request mix: {mix}. "
        f"Batching modes: {modes}. efficiency = req/s / in-process best images/s."
    )
    body = [line for result in report["models"] for line in model_section(result)]
    return harness.markdown("Serving benchmark", report, about, body)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.inproc_only:  # the pinned subprocess of measure_in_process_pinned
        result = measure_in_process(args.model_dir, build_image_set(args), args)
        args.inproc_only.write_text(json.dumps(result))
        return
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    model_dirs = [d for d in (args.model_dir, args.model_dir2) if d is not None]
    served = [(d, runtime) for d in model_dirs for runtime in args.runtimes]
    infos = {key: model_info(*key) for key in served}
    pinning = "client on CPU {}, server on CPU {}" if args.server_cpus else "not pinned"
    pinning = pinning.format(args.client_cpus, args.server_cpus)
    report = harness.new_report("bench.serve", argv, pinning=pinning)
    report["settings"] = {k: v for k, v in vars(args).items() if not k.startswith("model_dir")}
    images = build_image_set(args)
    report["images"] = images.describe()
    print(report["command"], report["images"], sep="\n", flush=True)
    # The limit before and after the servers (none running either time): this machine's
    # speed drifts over minutes, and the mean stands for the time between.
    before = {s: None if args.no_inproc else measure_in_process_pinned(*s, args) for s in served}
    rows = {}
    for model_dir in model_dirs:
        configs = [(runtime, mode) for runtime in args.runtimes for mode in args.modes]
        rows[model_dir] = bench_servers(model_dir, configs, images, args)
    report["models"] = []
    for model_dir, runtime in served:  # every server is stopped by now
        limit = None
        if not args.no_inproc:
            after = measure_in_process_pinned(model_dir, runtime, args)
            limit = combine_in_process(before[model_dir, runtime], after)
        service = [row for mode in args.modes for row in rows[model_dir][runtime, mode]]
        for row in service:
            best = limit["best"]["images_per_s"] if limit else None
            row["efficiency"] = f"{row['req_per_s'] / best:.0%}" if best else None
        model = infos[model_dir, runtime]
        report["models"].append({"model_dir": str(model_dir), "runtime": runtime, "model": model})
        report["models"][-1] |= {"service": service, "in_process": limit}
    report["environment"]["loadavg_end"] = harness.loadavg()
    harness.write_report(report, render(report), args.out)
    if args.out.resolve() == sizing.RESULTS / "runtimes-serve.md":  # the run pods are sized from
        sizing.update("serve", sizing.serve_part(report))


if __name__ == "__main__":
    main()
