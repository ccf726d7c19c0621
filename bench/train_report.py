"""The report of ``bench.train``: one row per architecture and phase, and its markdown.

:func:`make_row` turns the measurements of ``bench.train_measure`` into a row
(with the ratios derived from them); :func:`render_markdown` renders the whole
report. The JSON beside the markdown holds the same dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.harness import cell, table

if TYPE_CHECKING:
    import keras


def count_params(weights: Sequence[Any]) -> int:
    """Number of scalars in a list of variables."""
    return int(sum(math.prod(w.shape) for w in weights))


def make_row(
    architecture: str,
    phase: str,
    model: keras.Model,
    pipeline: dict[str, Any],
    in_memory: dict[str, Any],
    cold: dict[str, Any] | None,
    cached: dict[str, Any],
    epoch_images: int,
    load: list[float],
) -> dict[str, Any]:
    """One table row: the measurements and the ratios derived from them."""
    row: dict[str, Any] = {
        "architecture": architecture,
        "phase": phase,
        "image_px": pipeline["image_size"][0],
        "params": model.count_params(),
        "trainable": count_params(model.trainable_weights),
        "pipeline_decode_img_s": pipeline["decode"]["img_s"],
        "pipeline_cached_img_s": pipeline["cached"]["img_s"],
        "in_memory_img_s": in_memory["img_s"],
        "in_memory_ms_step": in_memory["ms_per_step"],
        "warmup_s": in_memory["warmup_s"],
        "real_cold_img_s": cold["img_s"] if cold else None,
        "real_cold_first_step_s": cold["first_step_s"] if cold else None,
        "real_cached_img_s": cached["img_s"],
        "real_cached_ms_step": cached["ms_per_step"],
        "real_cached_first_step_s": cached["first_step_s"],
        "loadavg_1m": load[0],
        "measurements": {"in_memory": in_memory, "real_cold": cold, "real_cached": cached},
    }
    row["real_vs_in_memory"] = f"{cached['img_s'] / in_memory['img_s']:.0%}"
    row["cold_vs_cached"] = f"{cold['img_s'] / cached['img_s']:.0%}" if cold else None
    row["epoch_cold_s"] = round(epoch_images / cold["img_s"]) if cold else None
    row["epoch_cached_s"] = round(epoch_images / cached["img_s"])
    return row


COLUMNS = [
    ("architecture", "architecture"),
    ("phase", "phase"),
    ("px", "image_px"),
    ("params", "params"),
    ("trainable", "trainable"),
    ("pipeline decode img/s", "pipeline_decode_img_s"),
    ("pipeline cached img/s", "pipeline_cached_img_s"),
    ("in-memory img/s", "in_memory_img_s"),
    ("in-memory ms/step", "in_memory_ms_step"),
    ("real cold img/s", "real_cold_img_s"),
    ("real cached img/s", "real_cached_img_s"),
    ("real cached ms/step", "real_cached_ms_step"),
]
DERIVED_COLUMNS = [
    ("architecture", "architecture"),
    ("phase", "phase"),
    ("real ÷ in-memory", "real_vs_in_memory"),
    ("cold ÷ cached", "cold_vs_cached"),
    ("1st step s (cold)", "real_cold_first_step_s"),
    ("1st step s (cached)", "real_cached_first_step_s"),
    ("warm-up s", "warmup_s"),
    ("s/epoch cold", "epoch_cold_s"),
    ("s/epoch cached", "epoch_cached_s"),
    ("load 1 min", "loadavg_1m"),
]
TEXT_KEYS = {"architecture", "phase"}


def number(value: Any) -> str:
    """A table cell, with thousands separators for integers."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else cell(value)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown."""
    env, s = report["environment"], report["settings"]
    pipelines = "; ".join(
        f"{p['image_size'][0]} px: decode {p['decode']['img_s']} img/s "
        f"(first batch after {p['decode']['first_batch_s']} s), cached {p['cached']['img_s']} "
        f"img/s (first batch after {p['cached']['first_batch_s']} s)"
        for p in report["pipelines"]
    )
    lines = [
        "# Training benchmark",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"{report['started']}; {env['cpus']} CPUs, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, default thread counts; load average at start "
        f"{env['loadavg_start']}, at end {env.get('loadavg_end')}. "
        f"{s['images']} training photos (half cats, half dogs, seed {s['seed']}), "
        f"batch {s['batch_size']}; in memory: {s['warmup_steps']} warm-up + {s['steps']} timed "
        f"steps; real pipeline: 2 epochs (epoch 1 decodes, epoch 2 reads the cache)"
        + (
            f"; transfer: {s['backbone']} backbone, weights {s['weights']}."
            if "transfer" in s["archs"]
            else "."
        ),
        "",
        f"Input pipeline alone: {pipelines}.",
        "",
        "`make_dataset` as in training (PIL decode, in-memory uint8 cache, shuffle over the "
        "whole split, /255, one-hot, prefetch); models compiled by `compile_model` (Adam, "
        "categorical cross-entropy). `pipeline` = input pipeline alone, `in-memory` = one "
        "batch of tensors repeated (compute ceiling), `real` = `model.fit` on the pipeline "
        "(cold: epoch 1, cached: epoch 2; transfer fine-tune: one more cached epoch with the "
        "backbone unfrozen). See `bench/train.py` for details.",
        "",
        *table(report["rows"], COLUMNS, TEXT_KEYS, number),
        "",
        f"Derived: `real ÷ in-memory` = real cached img/s / in-memory img/s; `1st step s` = "
        f"wait for the shuffle buffer (whole split) plus the first step; `warm-up s` = "
        f"{s['warmup_steps']} in-memory warm-up step(s) including the trace; `s/epoch` = "
        f"{s['epoch_images']:,} training photos / real img/s (no validation).",
        "",
        *table(report["rows"], DERIVED_COLUMNS, TEXT_KEYS, number),
    ]
    return "\n".join(lines)
