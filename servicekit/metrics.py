"""Prometheus text from ``/metrics``: parsed into samples, and one value picked from them.

:func:`value` refuses a metric the answer does not declare (a ``KeyError``), so a
check such as ``value(m, "catdog_images_in_flight") == 0`` fails when the gauge is
renamed or dropped instead of reading 0. A declared family without samples yet (a
labelled counter nothing has counted) is 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import httpx
from prometheus_client.parser import text_string_to_metric_families

# the sample names a family called NAME may have (counter, histogram, summary, info)
_SUFFIXES = ("", "_total", "_created", "_count", "_sum", "_bucket", "_info")


class Sample(NamedTuple):
    """One line of Prometheus text: ``name{labels} value``."""

    name: str
    labels: dict[str, str]
    value: float


class Metrics(list):
    """The samples of one ``/metrics`` answer, and every sample name it declares."""

    def __init__(self, samples: list[Sample], declared: set[str]) -> None:
        super().__init__(samples)
        self.declared = frozenset(declared) | {s.name for s in samples}


def parse_metrics(text: str) -> Metrics:
    """Every sample of a ``/metrics`` answer."""
    samples: list[Sample] = []
    declared: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + suffix for suffix in _SUFFIXES)
        samples += [Sample(s.name, dict(s.labels), float(s.value)) for s in family.samples]
    return Metrics(samples, declared)


def _parsed(metrics: str | Metrics) -> Metrics:
    return parse_metrics(metrics) if isinstance(metrics, str) else metrics


def samples(metrics: str | Metrics, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``.

    Raises ``KeyError`` if the answer does not declare ``name`` at all.
    """
    parsed = _parsed(metrics)
    declared = getattr(parsed, "declared", None) or {s.name for s in parsed}
    if name not in declared:
        raise KeyError(f"/metrics has no metric {name!r}")
    return [
        s.value
        for s in parsed
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(metrics: str | Metrics, name: str, **labels: str) -> float:
    """The sum of the matching samples; 0.0 if the metric is declared but none match.

    Raises ``KeyError`` if the answer does not declare ``name``.
    """
    return float(sum(samples(metrics, name, **labels)))


def mean(metrics: str | Metrics, histogram: str, **labels: str) -> float:
    """A histogram's ``_sum / _count`` (NaN if it counted nothing)."""
    parsed = _parsed(metrics)
    count = value(parsed, f"{histogram}_count", **labels)
    return value(parsed, f"{histogram}_sum", **labels) / count if count else math.nan


async def read_metrics(client: httpx.AsyncClient, url: str = "") -> Metrics:
    """``GET {url}/metrics``, parsed."""
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)
