"""servicekit.value: a metric the answer does not declare is an error, not 0."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from servicekit import mean, value


def _exposition() -> str:
    registry = CollectorRegistry()
    Gauge("catdog_images_in_flight", "in flight", registry=registry).set(2)
    Counter("catdog_requests", "requests", ["status"], registry=registry).labels("200").inc(3)
    Counter("catdog_unused", "declared, nothing counted yet", ["status"], registry=registry)
    return generate_latest(registry).decode()


def test_value_reads_declared_metrics() -> None:
    text = _exposition()
    assert value(text, "catdog_images_in_flight") == 2
    assert value(text, "catdog_requests_total", status="200") == 3
    assert value(text, "catdog_requests_total", status="500") == 0  # label not seen yet
    assert value(text, "catdog_unused_total") == 0  # declared, no samples yet


def test_value_refuses_a_metric_that_is_not_there() -> None:
    text = _exposition()
    with pytest.raises(KeyError, match="catdog_images_inflight"):
        value(text, "catdog_images_inflight")
    with pytest.raises(KeyError):
        mean(text, "catdog_batch_size")


def test_no_test_imports_the_benchmarks() -> None:
    """Tests stand alone: what they share with bench/ lives in servicekit."""
    tests = Path(__file__).resolve().parent
    pattern = re.compile(r"^\s*(from|import) bench\b", re.MULTILINE)
    importing = [
        str(p.relative_to(tests)) for p in tests.rglob("*.py") if pattern.search(p.read_text())
    ]
    assert not importing, importing
