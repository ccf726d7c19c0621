"""Fixtures: each overlay rendered once per session, and its pods' main containers.

``overlay`` is parametrized over every ``deploy/k8s/overlays/**/kustomization.yaml``
found, so a new overlay is rendered and validated without touching the tests.
"""

from __future__ import annotations

import pytest

from tests.deploy import k8s

ALL_OVERLAYS = k8s.overlays()
SERVING = [o for o in ALL_OVERLAYS if not o.endswith("/training")]
TRAINING = [o for o in ALL_OVERLAYS if o.endswith("/training")]


def flavor(overlay: str) -> str:
    """``cpu`` or ``gpu``: the first part of an overlay's path."""
    return overlay.split("/")[0]


def serving_container(docs: tuple[k8s.Doc, ...]) -> tuple[k8s.Doc, k8s.Doc]:
    """``(pod spec, main container)`` of the one serving workload in a render."""
    workloads = k8s.find(docs, "Deployment") + k8s.find(docs, "InferenceService")
    assert len(workloads) == 1, [k8s.label(d) for d in workloads]
    [(_, pod)] = list(k8s.pod_specs(workloads[0]))
    main = pod["containers"][0]
    return pod, main


@pytest.fixture(params=ALL_OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """Each overlay's path under ``overlays/``."""
    return request.param


@pytest.fixture(params=SERVING)
def serving(request: pytest.FixtureRequest) -> str:
    """Each overlay that runs the service (a Deployment or an InferenceService)."""
    return request.param


@pytest.fixture(params=TRAINING)
def training(request: pytest.FixtureRequest) -> str:
    """Each overlay that runs training (a TFJob)."""
    return request.param
