"""The markdown of ``bench runtimes``: one row per runtime configuration, and the
interleaved threads x batch strategy table."""

from __future__ import annotations

import os
import statistics
from datetime import datetime, timezone
from typing import Any


def interleaved_markdown(rows: list[dict[str, Any]]) -> str:
    """The in-process LiteRT comparison: median (best) per image."""
    lines = [
        "",
        "## LiteRT threads and batch strategy, interleaved in one process",
        "",
        "Alternating blocks of calls (4 blocks; per block 25 calls at batch 1, 2 at batch 32, "
        "the 16-batch mix once), so every configuration meets the same background load. "
        "Median (best) per image. Buckets: 1/2/4/8/16/32, one interpreter each.",
        "",
        "| interpreter threads | batch strategy | batch 1 | batch 32, per image "
        "| mixed 1-32, per image | interpreters |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {r['batching']} "
            + "".join(
                f"| {r[f'{k}_median_ms']:.2f} ms ({r[f'{k}_min_ms']:.2f}) "
                for k in ("b1", "b32", "mix")
            )
            + f"| {r['interpreters']} |"
        )
    return "\n".join(lines) + "\n"


def markdown(
    results: list[dict[str, Any]],
    configs: list[dict[str, Any]],
    command: str,
    paused_pids: list[int],
) -> str:
    """The report: the command, the setting, one row per configuration (medians)."""
    lines = [
        "# Model runtimes: TensorFlow SavedModel signature vs LiteRT",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {os.cpu_count()} cores, "
        f"ai-edge-litert {_version('ai-edge-litert')}, tensorflow {_version('tensorflow')}; "
        f"medians of {max(r['round'] for r in results) + 1} rounds, each configuration in a "
        "fresh process"
        + (f"; training job {paused_pids} paused meanwhile." if paused_pids else "."),
        "Batch 1: median of 40 calls; batch 32: median of 3 calls / 32; mixed: 16 batches "
        "of seeded random sizes 1-32 after one warm-up pass over them, total time / images. "
        "CPU: the process's CPU time (all its threads) over the same calls, which other "
        "processes on the machine inflate less than wall time. "
        "max |Δp|: 32 real test photos, against TensorFlow with 1 thread.",
        "",
        "| runtime | batch 1 | batch 32, per image | batch 32, CPU per image "
        "| mixed 1-32, per image | mixed, CPU per image | import | load "
        "| RSS after import + load | RSS after batch 32 | max \\|Δp\\| vs TF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, config in enumerate(configs):
        rows = [r for r in results if r["config"] == i]

        def median(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        worst = max(r["max_abs_diff"] for r in rows)
        lines.append(
            f"| {label(config)} | {median('batch1_ms'):.2f} ms "
            f"| {median('batch32_ms_per_image'):.2f} ms "
            f"| {median('batch32_cpu_ms_per_image'):.2f} ms "
            f"| {median('mixed_ms_per_image'):.2f} ms "
            f"| {median('mixed_cpu_ms_per_image'):.2f} ms "
            f"| {median('import_s'):.2f} s | {median('load_s'):.2f} s "
            f"| {median('rss_loaded_mb'):.0f} MB | {median('rss_after_mb'):.0f} MB "
            f"| {'—' if worst == 0 else f'{worst:.1g}'} |"
        )
    return "\n".join(lines) + "\n"


def label(config: dict[str, Any]) -> str:
    """A configuration in words (the first column)."""
    name = "TF SavedModel signature" if config["runtime"] == "tensorflow" else "LiteRT"
    batching = "" if config["runtime"] == "tensorflow" else f", {config['batching']}"
    busy = f", {config['busy_cores']} other core busy" if config.get("busy_cores") else ""
    threads = f"{config['threads']} thread{'s' if config['threads'] > 1 else ''}"
    return f"{name}, {threads}{batching}{busy}"


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
