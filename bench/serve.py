"""Serving benchmark: the real service under closed-loop load, against the in-process limit.

For each model base folder, each runtime of ``--runtimes`` (``CATDOG_RUNTIME``;
default: none set, the service picks) and each batching mode (``on``: the
service defaults; ``off``: ``CATDOG_MAX_BATCH_SIZE=1``; more with ``--mode``)
this starts the service as a subprocess on a free port (``bench.harness``),
one after the other, and times each until ``GET /readyz`` answers 200. Then for
each client count, against each server in turn (in the opposite order at the
next count, so the machine's drift over minutes favours none), it runs C
closed-loop asyncio clients (httpx, one connection each) that POST a random
photo to ``/predict`` for a warm-up and then for ``--duration`` seconds
(``bench.serve_load``). It records latency and
outcome of every request started after the warm-up, the batch sizes the service
used (from ``/metrics``), the server's resident memory right after ``/readyz``
first answered 200 (``VmRSS``, the idle RSS) and its peak RSS (``VmHWM`` in
``/proc/<pid>/status``). The request mix is in ``bench.serve_images``.

Before the first server starts and after the last one stops, it loads the same
version with each runtime, without HTTP, and measures images/s of decode +
preprocess + model at several batch sizes (``bench.serve_limit``): the best,
averaged over the two measurements, is what the model can do on these cores,
and ``service req/s / that`` is the service's efficiency. With two or more
runtimes, the report puts them side by side against ``tensorflow``
(``bench.serve_compare``).

CPU pinning (default on a machine with 2+ cores): the load generator runs on
the first allowed core and the server on the rest, so the client's CPU use does
not distort batching on vs off; the in-process limit is measured in a
subprocess pinned to the server's cores, so efficiency compares like with like.
``--no-pin`` shares every core.

``--model-dir2 untrained:article-3`` benchmarks an untrained export of that
architecture (``bench.models``): same graph and speed, no training run needed.

``--mode NAME:SETTING=VALUE,...`` adds a batching mode of its own (e.g.
``b8:max_batch_size=8,batch_timeout_ms=0``), so several settings are measured in
one run on the same images.

Definitions used in the tables (``bench.serve_report``):

* ``req/s``: 200 answers that completed inside the measured window / its length.
* ``p50/p90/p99``: latency of the 200 answers to requests started in the window
  (requests still running at the end are waited for).
* ``503``, ``other``: other HTTP statuses; ``socket``: transport errors
  (connection refused/reset, protocol errors); ``timeouts``: no answer within
  ``--timeout``.
* ``mean batch``: ``catdog_batch_size_sum / _count`` over the measured window.
* ``peak RSS``: the server's high-water mark since it started (so it includes
  the earlier, smaller client counts of the same server); ``idle RSS``: its
  ``VmRSS`` right after ``/readyz`` first answered 200.
* ``other CPU cores``: CPU the rest of the machine used over the window (all
  busy time in ``/proc/stat`` minus the server's and the load generator's).

Usage::

    .venv/bin/python -m bench.serve --model-dir models/catdog \\
        --model-dir2 untrained:article-3 --clients 1,16,64,256 --duration 20 \\
        --images data/split/test --out bench/results/serve.md
    .venv/bin/python -m bench.serve --model-dir models/catdog --runtimes litert,tensorflow \\
        --modes on --mix 0,1,0 --no-pin --out bench/results/runtimes-serve.md

The report ends with the targets set for ``article-3`` at 64 clients (throughput
>= 1.4x and p99 <= 0.6x batching off, >= 85% of the in-process limit), 1 client
(p50 no worse than off), startup (ready <= 5 s) and 256 clients (no socket
errors), each with what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import sizing
from bench.harness import loadavg, new_report, split_cpus, write_report
from bench.serve_compare import best_modes, compare_runtimes
from bench.serve_images import GROUPS, build_image_set
from bench.serve_limit import combine_in_process, measure_in_process, measure_in_process_pinned
from bench.serve_load import MODES, bench_servers
from bench.serve_report import finish_model, model_info, render_markdown

RUNTIMES = ("auto", "litert", "tensorflow")  # CATDOG_RUNTIME values


def int_list(text: str) -> list[int]:
    """``"1,16,64"`` -> ``[1, 16, 64]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def float_list(text: str) -> list[float]:
    """``"0.78,0.2,0.02"`` -> ``[0.78, 0.2, 0.02]``."""
    return [float(part) for part in text.split(",") if part.strip()]


def parse_args(
    argv: Sequence[str] | None = None,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
    prog: str = "bench.serve",
    description: str | None = __doc__,
) -> argparse.Namespace:
    """The command line (see the module docstring); ``extend`` adds a module's own options."""
    p = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=(description or "").split("\n")[0]
    )
    p.add_argument("--model-dir", type=model_dir_arg, required=True, help="model base folder")
    p.add_argument(
        "--model-dir2",
        type=model_dir_arg,
        help="a second model base folder, or untrained:ARCH (e.g. untrained:article-3)",
    )
    p.add_argument("--clients", type=int_list, default=[1, 16, 64, 256], help="e.g. 1,16,64")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    p.add_argument("--modes", default="on,off", help="batching modes: on,off and --mode names")
    p.add_argument(
        "--mode",
        type=mode_arg,
        action="append",
        default=[],
        metavar="NAME:SETTING=VALUE,...",
        help="a mode of its own (repeatable), e.g. b8:max_batch_size=8,batch_timeout_ms=0; "
        "OTEL_* names are passed to the server as they are (OpenTelemetry's variables)",
    )
    p.add_argument(
        "--runtimes",
        default="",
        help="CATDOG_RUNTIME per server, side by side, e.g. litert,tensorflow (default: unset)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server (repeatable), e.g. CATDOG_BATCH_TIMEOUT_MS=20",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a header every client sends (repeatable), e.g. 'Authorization: Bearer KEY'",
    )
    p.add_argument("--images", type=Path, default=Path("data/split/test"))
    p.add_argument("--n-images", type=int, default=200, help="original photos used")
    p.add_argument("--n-medium", type=int, default=50, help="480x320 versions made")
    p.add_argument("--n-huge", type=int, default=4, help="12MP (4000x3000) versions made")
    p.add_argument(
        "--mix",
        type=float_list,
        default=[0.78, 0.20, 0.02],
        help="request share of original,480x320,12MP images",
    )
    p.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32, 64], help="in-process")
    p.add_argument(
        "--inproc-duration",
        type=float,
        default=None,
        help="seconds per in-process measurement (default: duration/4, within 1..10)",
    )
    p.add_argument("--no-inproc", action="store_true", help="skip the in-process limit")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="startup timeout, s")
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uvicorn access log (on, as in `make serve`)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="client on the first core, server and in-process limit on the others",
    )
    p.add_argument("--inproc-only", type=Path, help=argparse.SUPPRESS)  # internal: JSON path
    p.add_argument("--out", type=Path, default=Path(f"bench/results/{prog.split('.')[-1]}.md"))
    if extend is not None:
        extend(p)
    args = p.parse_args(argv)
    args.mode_settings = {**MODES, **dict(args.mode)}
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.modes += [name for name, _ in args.mode if name not in args.modes]
    if unknown := set(args.modes) - set(args.mode_settings):
        p.error(f"unknown modes {sorted(unknown)}; choose from {sorted(args.mode_settings)}")
    args.headers = dict(
        (k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in args.header)
    )
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


def mode_arg(text: str) -> tuple[str, dict[str, str]]:
    """``"b8:max_batch_size=8,batch_timeout_ms=0"`` -> ``("b8", {"max_batch_size": "8", ...})``."""
    name, _, settings = text.partition(":")
    pairs = [item.partition("=") for item in settings.split(",") if item.strip()]
    if not name.strip() or not pairs or any(not key.strip() or not eq for key, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME:SETTING=VALUE[,...], got {text!r}")
    return name.strip(), {key.strip().lower(): val.strip() for key, _, val in pairs}


def model_dir_arg(text: str) -> Path:
    """A model base folder; ``untrained:ARCH`` exports one first (see ``bench.models``)."""
    if text.startswith("untrained:"):
        from bench.models import export_untrained

        return export_untrained(text.split(":", 1)[1])
    return Path(text)


def check_model_dir(model_dir: Path, runtime: str | None) -> None:
    """Fail fast, before anything starts, on a folder the service could not serve."""
    versions = [p for p in model_dir.glob("*/saved_model.pb") if p.parent.name.isdigit()]
    if not versions:
        raise SystemExit(f"{model_dir}: no <version>/saved_model.pb inside")
    latest = max((p.parent for p in versions), key=lambda p: int(p.name))
    if runtime == "litert" and not (latest / "model.tflite").is_file():
        raise SystemExit(f"{latest}: no model.tflite, so no LiteRT runtime to measure")


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
    for model_dir, runtime in served:
        check_model_dir(model_dir, runtime)
    pinning = (
        f"client on CPU {sorted(args.client_cpus)}, server on CPU {sorted(args.server_cpus)}"
        if args.server_cpus
        else "not pinned: client and server share the cores"
    )
    report = new_report("bench.serve", argv, pinning=pinning)
    report["settings"] = {
        k: sorted(v) if isinstance(v, set) else v
        for k, v in vars(args).items()
        if k not in ("model_dir", "model_dir2")
    }
    print(report["command"], flush=True)
    images = build_image_set(args)
    report["images"] = images.describe()
    print(f"images: {report['images']}", flush=True)
    # The limit is measured before and after the services (none running either time):
    # this machine's speed drifts over minutes, and the mean stands for the time between.
    before = {s: None if args.no_inproc else measure_in_process_pinned(*s, args) for s in served}
    results: list[dict[str, Any]] = []
    for model_dir in model_dirs:
        configs = [(runtime, mode) for runtime in args.runtimes for mode in args.modes]
        rows = bench_servers(model_dir, configs, images, args)
        for runtime in args.runtimes:
            results.append(
                {
                    "model_dir": str(model_dir),
                    "runtime": runtime,
                    "model": model_info(model_dir),
                    "service": [row for mode in args.modes for row in rows[runtime, mode]],
                    "in_process": None,
                }
            )
    for result, key in zip(results, served):  # every server is stopped by now
        if not args.no_inproc:
            after = measure_in_process_pinned(*key, args)
            result["in_process"] = combine_in_process(before[key], after)
        finish_model(result)
    report["models"] = results
    report["comparisons"] = compare_runtimes(results)
    report["best_modes"] = best_modes(results)
    report["environment"]["loadavg_end"] = loadavg()
    write_report(report, render_markdown(report), args.out)
    sizing.update("serve", sizing.serve_part(report))


if __name__ == "__main__":
    main()
