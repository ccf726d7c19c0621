"""The InferenceService: a custom predictor KServe accepts, speaking a protocol the app serves.

``PROTOCOL=v2`` tells KServe (and its clients, gateways and InferenceGraphs) that
the predictor speaks the Open Inference Protocol, so the app must serve that
protocol's health and infer routes; which routes those are is the protocol's
definition (KServe's v2 REST API), the only paths written out in these tests.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy import app_facts, crds, k8s
from tests.deploy.conftest import serving_container

KSERVE = ["cpu/kserve", "gpu/kserve"]
# Open Inference Protocol v2, REST: what a KServe v2 client calls.
OIP_ROUTES = {
    r"/v2/health/live": "GET",
    r"/v2/health/ready": "GET",
    r"/v2/models/\{[^}]+\}/infer": "POST",
}


def _isvc(overlay: str) -> k8s.Doc:
    return k8s.one(k8s.render(overlay), "InferenceService")


@pytest.mark.parametrize("overlay", KSERVE)
def test_predictor_runs_in_raw_deployment_mode(overlay: str) -> None:
    """No Knative: KServe makes a plain Deployment our HPA and probes govern."""
    mode = _isvc(overlay)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode in ("RawDeployment", "Standard")


@pytest.mark.parametrize("overlay", KSERVE)
def test_custom_predictor_publishes_rest_first_then_grpc_and_declares_v2(overlay: str) -> None:
    """KServe's Service sends its port 80 (and its ingress) to the first container port,
    so that must be REST; in RawDeployment mode a further port is published under its own
    number, as h2c when its name contains "grpc"."""
    isvc = _isvc(overlay)
    [container] = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == crds.KSERVE_CONTAINER
    rest, grpc = container["ports"]
    assert rest["containerPort"] == app_facts.rest_port()
    assert "grpc" in grpc["name"] and grpc["containerPort"] == app_facts.grpc_port()
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode in ("RawDeployment", "Standard"), "Knative mode allows one port only"
    assert k8s.env_value(container, crds.KSERVE_PROTOCOL_ENV) == "v2"


@pytest.mark.parametrize("overlay", KSERVE)
def test_app_serves_the_declared_protocol(overlay: str) -> None:
    """Open Inference Protocol routes must exist in the app (they land with issue 15)."""
    table = app_facts.all_routes()
    missing = [
        f"{method} {pattern}"
        for pattern, method in OIP_ROUTES.items()
        if not any(re.fullmatch(pattern, path) and method in m for path, m in table.items())
    ]
    assert not missing, f"PROTOCOL=v2 but the app does not serve {missing}"


@pytest.mark.parametrize("overlay", KSERVE)
def test_inference_service_is_named_after_the_served_model(overlay: str) -> None:
    """Clients call /v2/models/<name>: the ISVC's name and the app's model name agree."""
    isvc = _isvc(overlay)
    _, main = serving_container(k8s.render(overlay))
    settings = app_facts.settings_from_env(k8s.resolved_env(main))
    assert isvc["metadata"]["name"] == settings.model_name
