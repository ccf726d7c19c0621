"""The markdown of ``bench overload``: goodput per connection count and kind, the
slowloris probe, and what the numbers say."""

from __future__ import annotations

from typing import Any

from bench.harness import (
    table,
)


def render(report: dict[str, Any]) -> str:
    """The markdown report."""
    env = report["environment"]
    columns = [
        ("connections", "connections"),
        ("client", "kind"),
        ("200/s", "ok_per_s"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("journey p99 ms", "journey_p99_ms"),
        ("503/s", "refused_per_s"),
        ("other", "other"),
        ("errors", "errors"),
        ("server CPU cores", "server_cores"),
        ("client CPU cores", "client_cores"),
    ]
    lines = [
        "# Goodput under overload",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"{report['started']}; {env['cpus']} CPUs ({env['pinning']}); load average at start "
        f"{env['loadavg_start']}, at end {env['loadavg_end']}; {report['warmup']} s warm-up, then "
        f"{report['duration']} s per row; {report['n_requests']} different 480x320 photos "
        f"({report['mean_kb']} KB mean); server stopped with {report['server_exit']}.",
        "",
        "`retry`: a 503 is retried at once; `honour`: the connection sleeps `Retry-After` "
        "first. p50/p99: one successful attempt; journey: from a photo's first attempt to its "
        "200. See `bench/overload.py`.",
        "",
        *table(report["rows"], columns, text=("kind",)),
    ]
    if report.get("slowloris"):
        probe_columns = [
            ("slow connections", "slow"),
            ("probe p50 ms", "p50_ms"),
            ("probe p99 ms", "p99_ms"),
            ("probe max ms", "max_ms"),
            ("probe statuses", "statuses"),
            ("slow ones closed by the server", "closed_by_server"),
        ]
        lines += [
            "",
            f"Slowloris: {report['probes']} photos posted one after another, alone and beside "
            "connections that send a header line a second and never finish (reconnecting when "
            "closed):",
            "",
            *table(report["slowloris"], probe_columns, text=("statuses",)),
        ]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines)
