"""The autoscaler, its metric pipeline and the objects that select pods fit together.

HPA -> custom metric (Prometheus Adapter rule) -> the gauge the app exports ->
the scrape (ServiceMonitor / PodMonitor) -> the pods; plus the target derived
in docs/deployment.md, the PDB and the Service.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy import app_facts, k8s, measured
from tests.deploy.conftest import flavor, serving_container


def _hpa(docs):
    [hpa] = k8s.find(docs, "HorizontalPodAutoscaler")
    return hpa


def _pods_metric(hpa) -> dict:
    [metric] = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return metric


def _in_flight_cap(settings) -> int:
    return getattr(settings, app_facts.in_flight_cap_field())


def _adapter_rules() -> list[dict]:
    with open(k8s.ADAPTER_VALUES) as f:
        return yaml.safe_load(f)["rules"]["custom"]


def test_hpa_scales_the_serving_workload(serving: str) -> None:
    docs = k8s.render(serving)
    target = _hpa(docs)["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1"
    deployments = k8s.find(docs, "Deployment")
    if deployments:
        assert target["name"] == deployments[0]["metadata"]["name"]
    else:  # KServe names the predictor's Deployment <name>-predictor
        isvc = k8s.one(docs, "InferenceService")
        assert target["name"] == f"{isvc['metadata']['name']}-predictor"
        annotations = isvc["metadata"]["annotations"]
        assert annotations["serving.kserve.io/autoscalerClass"] == "external", "two autoscalers"


def test_hpa_metric_is_a_gauge_the_app_exports(serving: str) -> None:
    hpa = _hpa(k8s.render(serving))
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    name = _pods_metric(hpa)["metric"]["name"]
    assert app_facts.metric_types().get(name) == "gauge", f"{name} is not a gauge of the app"


def test_adapter_rule_serves_that_metric_per_pod(serving: str) -> None:
    name = _pods_metric(_hpa(k8s.render(serving)))["metric"]["name"]
    rules = [r for r in _adapter_rules() if r["name"]["as"] == name]
    assert len(rules) == 1, f"no single adapter rule publishes {name}"
    [rule] = rules
    assert re.match(r"^\{?" + re.escape(name) + r"\b", rule["seriesQuery"]), rule["seriesQuery"]
    assert re.fullmatch(rule["name"]["matches"], name)
    overrides = rule["resources"]["overrides"]
    assert overrides["pod"]["resource"] == "pod"
    assert overrides["namespace"]["resource"] == "namespace"
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


def test_adapter_values_do_not_also_publish_the_default_rules() -> None:
    with open(k8s.ADAPTER_VALUES) as f:
        assert yaml.safe_load(f)["rules"]["default"] is False


def test_in_flight_target_leaves_headroom_below_the_admission_cap(serving: str) -> None:
    """Pods are added at half the images a pod admits: bursts fit while new pods start."""
    docs = k8s.render(serving)
    _, main = serving_container(docs)
    settings = app_facts.settings_from_env(k8s.resolved_env(main))
    target = float(_pods_metric(_hpa(docs))["target"]["averageValue"])
    assert 0 < target <= _in_flight_cap(settings) / 2


@pytest.mark.parametrize("overlay", ["cpu", "cpu/kserve"])
def test_cpu_in_flight_target_is_the_measured_knee(overlay: str) -> None:
    """The target is the images in flight (Little's law: req/s x mean latency) at the knee
    of the benchmark run with the pod's runtime and batching, scaled from the
    benchmark's cores to the pod's CPU limit."""
    docs = k8s.render(overlay)
    _, main = serving_container(docs)
    env = {**app_facts.image_env(flavor(overlay)), **k8s.resolved_env(main)}
    settings = app_facts.settings_from_env(env)
    run = measured.run_like(settings)
    assert run, f"no benchmark run of {settings.runtime} with this pod's batching settings"
    cores = k8s.cpu_cores(main["resources"]["limits"]["cpu"])
    expected = round(run.knee().in_flight * cores / run.cpus)
    target = float(_pods_metric(_hpa(docs))["target"]["averageValue"])
    assert target == expected, f"knee {run.knee()} on {run.cpus} cores"


def test_cpu_target_has_requests_to_measure_against(serving: str) -> None:
    docs = k8s.render(serving)
    [cpu] = [m["resource"] for m in _hpa(docs)["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and 0 < cpu["target"]["averageUtilization"] < 100
    pod, _ = serving_container(docs)
    for container in pod["containers"]:
        assert container["resources"]["requests"]["cpu"]


def test_replicas_and_disruption_budget_keep_a_pod_serving(serving: str) -> None:
    docs = k8s.render(serving)
    hpa = _hpa(docs)
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    [pdb] = k8s.find(docs, "PodDisruptionBudget")
    assert pdb["spec"].get("maxUnavailable") == 1
    isvc = k8s.find(docs, "InferenceService")
    if isvc:
        predictor = isvc[0]["spec"]["predictor"]
        assert predictor["minReplicas"] == hpa["spec"]["minReplicas"]
        assert predictor["maxReplicas"] == hpa["spec"]["maxReplicas"]


def _pod_labels(docs) -> dict[str, str]:
    deployments = k8s.find(docs, "Deployment")
    if deployments:
        return deployments[0]["spec"]["template"]["metadata"]["labels"]
    return k8s.one(docs, "InferenceService")["spec"]["predictor"]["labels"]


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is used here"
    return selector["matchLabels"].items() <= labels.items()


def test_selectors_pick_the_serving_pods(serving: str) -> None:
    docs = k8s.render(serving)
    labels = _pod_labels(docs)
    [pdb] = k8s.find(docs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"], labels)
    for service in k8s.find(docs, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
    for monitor in k8s.find(docs, "PodMonitor"):
        assert _selects(monitor["spec"]["selector"], labels)
    for monitor in k8s.find(docs, "ServiceMonitor"):
        [service] = [
            s
            for s in k8s.find(docs, "Service")
            if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    deployments = k8s.find(docs, "Deployment")
    if deployments:
        assert _selects(deployments[0]["spec"]["selector"], labels)


def test_scrape_ports_and_service_target_are_the_container_port(serving: str) -> None:
    docs = k8s.render(serving)
    _, main = serving_container(docs)
    named = {p.get("name") for p in main["ports"]}
    for monitor in k8s.find(docs, "PodMonitor"):
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= named
    for service in k8s.find(docs, "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named | {p["containerPort"] for p in main["ports"]}


def test_scrape_timeout_fits_the_interval(serving: str) -> None:
    def seconds(duration: str) -> float:
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))

    docs = k8s.render(serving)
    for monitor in k8s.find(docs, "ServiceMonitor") + k8s.find(docs, "PodMonitor"):
        endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        for endpoint in endpoints:
            assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
