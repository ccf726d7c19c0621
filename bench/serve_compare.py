"""Runtimes side by side in a ``bench.serve`` report (``--runtimes litert,tensorflow``).

Each runtime ran in a server of its own, on the same images and client counts,
in one run. :func:`compare_runtimes` pairs, for each model folder and batching
mode, every runtime's rows with the reference runtime's (``tensorflow`` when it
was measured, else the last one): throughput and latency ratios per client
count, startup (ready time, idle RSS after ``/readyz``, peak RSS) and the
in-process limit per runtime, and the runtime targets of issue 14 for each other
runtime: at 64 clients >= 1.5x the reference's throughput (aim 2x), at 1 client
p50 <= 0.6x, idle RSS <= 250 MB, ready <= 1 s after the process started.
With several batching modes, :func:`best_modes` also puts each runtime's best
mode at 64 clients against the reference's best. :func:`comparison_section` and
:func:`best_modes_section` render them as markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.harness import table

REFERENCE = "tensorflow"
THROUGHPUT_MIN, THROUGHPUT_AIM = 1.5, 2.0  # x the reference's req/s at 64 clients
P50_MAX = 0.6  # x the reference's p50 at 1 client
IDLE_RSS_MAX_MB = 250.0
READY_MAX_S = 1.0
TEXT = {"runtime", "target", "goal", "measured", "met"}  # left-aligned columns

ROW_COLUMNS = [
    ("clients", "clients"),
    ("runtime", "runtime"),
    ("req/s", "req_per_s"),
    ("req/s vs ref", "req_ratio"),
    ("p50 ms", "p50_ms"),
    ("p50 vs ref", "p50_ratio"),
    ("p99 ms", "p99_ms"),
    ("p99 vs ref", "p99_ratio"),
    ("503", "status_503"),
    ("mean batch", "mean_batch"),
    ("server CPU cores", "server_cores"),
    ("client CPU cores", "client_cores"),
    ("other CPU cores", "other_cores"),
    ("peak RSS MB", "peak_rss_mb"),
]
STARTUP_COLUMNS = [
    ("runtime", "runtime"),
    ("ready s", "ready_s"),
    ("idle RSS MB", "idle_rss_mb"),
    ("peak RSS MB", "peak_rss_mb"),
    ("in-process limit images/s", "limit"),
]


def runtime_name(result: dict[str, Any]) -> str:
    """The runtime that served (from ``/metrics``), else the one asked for."""
    served = {r["runtime"] for r in result["service"] if r.get("runtime")}
    if len(served) == 1:
        return served.pop()
    return result.get("runtime") or "default"


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference`` to 2 decimals (None when either is missing or zero)."""
    if not value or not reference:
        return None
    return round(value / reference, 2)


def compare_runtimes(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One comparison per model folder and batching mode measured with 2+ runtimes."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_model.setdefault(result["model_dir"], []).append(result)
    comparisons = []
    for model_dir, group in by_model.items():
        named = {runtime_name(r): r for r in group}
        if len(named) < 2:
            continue
        reference = REFERENCE if REFERENCE in named else list(named)[-1]
        modes = dict.fromkeys(row["mode"] for r in group for row in r["service"])
        for mode in modes:
            rows = {
                name: [row for row in r["service"] if row["mode"] == mode]
                for name, r in named.items()
            }
            comparisons.append(compare_mode(model_dir, mode, reference, rows, named))
    return comparisons


def best_modes(results: Sequence[dict[str, Any]], clients: int = 64) -> list[dict[str, Any]]:
    """Per model folder and runtime, its best batching mode at ``clients`` (highest req/s),
    with the ratio to the reference runtime's best: each runtime at its own best settings."""
    best: dict[str, dict[str, dict[str, Any]]] = {}
    for result in results:
        rows = [r for r in result["service"] if r["clients"] == clients]
        if rows:
            top = max(rows, key=lambda r: r["req_per_s"])
            best.setdefault(result["model_dir"], {})[runtime_name(result)] = top
    table_rows = []
    for model_dir, runtimes in best.items():
        modes = {row["mode"] for result in results for row in result["service"]}
        if len(runtimes) < 2 or len(modes) < 2:
            continue
        reference = REFERENCE if REFERENCE in runtimes else list(runtimes)[-1]
        for name, row in runtimes.items():
            table_rows.append(
                {"model_dir": model_dir, "runtime": name, "clients": clients}
                | {key: row[key] for key in ("mode", "req_per_s", "p50_ms", "p99_ms")}
                | {"req_ratio": ratio(row["req_per_s"], runtimes[reference]["req_per_s"])}
            )
    return table_rows


def best_modes_section(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown for :func:`best_modes` (nothing when there is no such table)."""
    if not rows:
        return []
    columns = [("model", "model_dir"), ("runtime", "runtime"), ("clients", "clients")]
    columns += [("best mode", "mode"), ("req/s", "req_per_s"), ("req/s vs ref", "req_ratio")]
    columns += [("p50 ms", "p50_ms"), ("p99 ms", "p99_ms")]
    return [
        "## Each runtime at its best batching mode",
        "",
        f"Ratios against {REFERENCE}'s best mode at the same client count.",
        "",
        *table(rows, columns, TEXT | {"model_dir", "mode"}),
        "",
    ]


def compare_mode(
    model_dir: str,
    mode: str,
    reference: str,
    rows: dict[str, list[dict[str, Any]]],
    results: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Every runtime's rows of one batching mode against the reference runtime's."""
    ref = {row["clients"]: row for row in rows[reference]}
    clients = sorted({row["clients"] for runtime_rows in rows.values() for row in runtime_rows})
    side_by_side = []
    for count in clients:
        for name, runtime_rows in rows.items():
            row = next((r for r in runtime_rows if r["clients"] == count), None)
            if row is None:
                continue
            base = ref.get(count, {})
            side_by_side.append(
                {key: row.get(key) for _, key in ROW_COLUMNS}
                | {
                    "runtime": name,
                    "req_ratio": ratio(row["req_per_s"], base.get("req_per_s")),
                    "p50_ratio": ratio(row["p50_ms"], base.get("p50_ms")),
                    "p99_ratio": ratio(row["p99_ms"], base.get("p99_ms")),
                }
            )
    startup = []
    for name, runtime_rows in rows.items():
        if not runtime_rows:
            continue
        best = (results[name].get("in_process") or {}).get("best", {})
        startup.append(
            {
                "runtime": name,
                "ready_s": runtime_rows[0]["ready_s"],
                "idle_rss_mb": runtime_rows[0].get("idle_rss_mb"),
                "peak_rss_mb": max(r["peak_rss_mb"] or 0.0 for r in runtime_rows),
                "limit": best.get("images_per_s"),
            }
        )
    return {
        "model_dir": model_dir,
        "mode": mode,
        "reference": reference,
        "rows": side_by_side,
        "startup": startup,
        "targets": [
            check
            for name in rows
            if name != reference
            for check in runtime_targets(name, reference, side_by_side, startup)
        ],
    }


def runtime_targets(
    name: str, reference: str, rows: list[dict[str, Any]], startup: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Issue 14's targets for runtime ``name`` against ``reference``, with what was measured."""
    mine = {r["clients"]: r for r in rows if r["runtime"] == name}
    started = next(s for s in startup if s["runtime"] == name)
    checks: list[dict[str, Any]] = []

    def check(target: str, goal: str, measured: str, ok: bool) -> None:
        checks.append(
            {"target": f"{name}: {target}", "goal": goal, "measured": measured} | {"met": ok}
        )

    if (row := mine.get(64)) and row["req_ratio"] is not None:
        check(
            f"64 clients: throughput vs {reference}",
            f">= {THROUGHPUT_MIN}x (aim {THROUGHPUT_AIM}x)",
            f"{row['req_ratio']:.2f}x ({row['req_per_s']} req/s)",
            row["req_ratio"] >= THROUGHPUT_MIN,
        )
    if (row := mine.get(1)) and row["p50_ratio"] is not None:
        check(
            f"1 client: p50 vs {reference}",
            f"<= {P50_MAX}x",
            f"{row['p50_ratio']:.2f}x ({row['p50_ms']} ms)",
            row["p50_ratio"] <= P50_MAX,
        )
    if started["idle_rss_mb"] is not None:
        check(
            "idle RSS after start",
            f"<= {IDLE_RSS_MAX_MB:.0f} MB",
            f"{started['idle_rss_mb']} MB",
            started["idle_rss_mb"] <= IDLE_RSS_MAX_MB,
        )
    check(
        "ready after the process starts",
        f"<= {READY_MAX_S:.0f} s",
        f"{started['ready_s']} s",
        started["ready_s"] <= READY_MAX_S,
    )
    return checks


def comparison_section(comparison: dict[str, Any]) -> list[str]:
    """The markdown for one comparison: rows side by side, startup, targets."""
    reference = comparison["reference"]
    lines = [
        f"## Runtimes side by side: `{comparison['model_dir']}`, batching {comparison['mode']}",
        "",
        f"Each runtime served by a server of its own; ratios are against {reference} "
        "at the same client count.",
        "",
        *table(comparison["rows"], ROW_COLUMNS, TEXT),
        "",
        "Startup: ready = launch until `GET /readyz` answered 200; idle RSS = `VmRSS` right "
        "after that; peak RSS = `VmHWM` after the last client count.",
        "",
        *table(comparison["startup"], STARTUP_COLUMNS, TEXT),
        "",
    ]
    return lines + checks_table("Runtime targets:", comparison["targets"])


def checks_table(title: str, checks: Sequence[dict[str, Any]]) -> list[str]:
    """Targets with goal, measured value and whether each was met (nothing when none)."""
    if not checks:
        return []
    rows = [{**c, "met": "yes" if c["met"] else "**no**"} for c in checks]
    columns = [("target", "target"), ("goal", "goal"), ("measured", "measured"), ("met", "met")]
    return [title, "", *table(rows, columns, TEXT), ""]
