"""Every overlay renders with kustomize, and every document passes its schema.

Built-in kinds are checked against the strict schemas of the oldest and newest
Kubernetes versions in ``k8s.KUBERNETES_VERSIONS`` (unknown fields fail), custom
resources against ``tests.deploy.crds``. A few broken copies show the validators
do reject what they should. References inside a render (claims, config maps,
service accounts) must point at something the same render or a serving overlay
creates.
"""

from __future__ import annotations

import copy

import pytest
from kubernetes_validate.utils import ValidationError

from tests.deploy import crds, k8s
from tests.deploy.conftest import ALL_OVERLAYS, flavor

SERVING_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ServiceMonitor",
    "PrometheusRule",
}
KSERVE_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "PersistentVolumeClaim",
    "InferenceService",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "PodMonitor",
    "PrometheusRule",
}
TRAINING_KINDS = {"PersistentVolumeClaim", "TFJob"}


def expected_kinds(overlay: str) -> set[str]:
    """What an overlay is meant to create, by where it sits."""
    if overlay.endswith("/kserve"):
        return KSERVE_KINDS
    if overlay.endswith("/training"):
        return TRAINING_KINDS
    return SERVING_KINDS


def test_both_flavors_have_every_variant() -> None:
    """cpu and gpu each come as plain service, KServe service and training."""
    assert set(ALL_OVERLAYS) == {
        f"{f}{v}" for f in ("cpu", "gpu") for v in ("", "/kserve", "/training")
    }


def test_overlay_renders_the_expected_resources(overlay: str) -> None:
    docs = k8s.render(overlay)
    assert {d["kind"] for d in docs} == expected_kinds(overlay)
    identities = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(identities) == len(set(identities)), "a resource is rendered twice"


def test_every_resource_is_namespaced_by_the_overlay(overlay: str) -> None:
    namespaces = {d["metadata"].get("namespace") for d in k8s.render(overlay)}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


@pytest.mark.parametrize("version", k8s.KUBERNETES_VERSIONS)
def test_every_document_validates(overlay: str, version: str) -> None:
    for doc in k8s.render(overlay):
        k8s.validate(doc, version)


@pytest.mark.parametrize("version", k8s.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", k8s.job_files(), ids=lambda p: p.name)
def test_stand_alone_manifests_validate(path: k8s.Path, version: str) -> None:
    for doc in k8s.load_file(path):
        k8s.validate(doc, version)


def test_images_match_the_flavor(overlay: str) -> None:
    """Serving pods run the flavor's image, training pods the train image; all tagged."""
    for doc in k8s.render(overlay):
        for _, pod in k8s.pod_specs(doc):
            for container in k8s.containers(pod):
                name, _, tag = container["image"].rpartition(":")
                assert name and tag, f"{k8s.label(doc)}: untagged image {container['image']}"
                kind = "train" if doc["kind"] == "TFJob" else flavor(overlay)
                assert tag.endswith(f"-{kind}"), container["image"]


def test_references_resolve(overlay: str) -> None:
    """Claims, config maps and service accounts a pod uses exist in a render."""
    docs = k8s.render(overlay)
    serving = k8s.render(flavor(overlay))
    created = {(d["kind"], d["metadata"]["name"]) for d in docs + serving}
    for doc in docs:
        for where, pod in k8s.pod_specs(doc):
            account = pod.get("serviceAccountName")
            if account:
                assert ("ServiceAccount", account) in created, f"{where}: {account}"
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in created, claim
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in created
            names = {v["name"] for v in pod.get("volumes", [])}
            for container in k8s.containers(pod):
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in names, f"{container['name']}: {mount['name']}"


def test_stand_alone_manifests_use_claims_the_overlays_create() -> None:
    created = {
        d["metadata"]["name"]
        for o in ALL_OVERLAYS
        for d in k8s.render(o)
        if d["kind"] == "PersistentVolumeClaim"
    }
    for path in k8s.job_files():
        for doc in k8s.load_file(path):
            for _, pod in k8s.pod_specs(doc):
                for volume in pod.get("volumes", []):
                    if "persistentVolumeClaim" in volume:
                        assert volume["persistentVolumeClaim"]["claimName"] in created


# ---------------------------------------------------------------- the validators bite


def _broken(kind: str, overlay: str, damage) -> k8s.Doc:
    doc = copy.deepcopy(k8s.one(k8s.render(overlay), kind))
    damage(doc)
    return doc


def _container(doc: k8s.Doc) -> k8s.Doc:
    return next(iter(k8s.pod_specs(doc)))[1]["containers"][0]


BROKEN = {
    "misspelt probe field": (
        "Deployment",
        "cpu",
        lambda d: _container(d).update(readinesProbe=_container(d).pop("readinessProbe")),
    ),
    "HPA metric without a target": (
        "HorizontalPodAutoscaler",
        "cpu",
        lambda d: d["spec"]["metrics"][1]["pods"].pop("target"),
    ),
    "PDB with a string count": (
        "PodDisruptionBudget",
        "cpu",
        lambda d: d["spec"].update(minAvailable={"pods": 1}),
    ),
    "predictor missing": ("InferenceService", "cpu/kserve", lambda d: d["spec"].pop("predictor")),
    "predictor with an unknown field": (
        "InferenceService",
        "cpu/kserve",
        lambda d: d["spec"]["predictor"].update(minReplica=1),
    ),
    "kserve-container renamed": (
        "InferenceService",
        "cpu/kserve",
        lambda d: d["spec"]["predictor"]["containers"][0].update(name="server"),
    ),
    "predictor container with a bad probe": (
        "InferenceService",
        "cpu/kserve",
        lambda d: d["spec"]["predictor"]["containers"][0]["readinessProbe"].update(httpGet=1),
    ),
    "unknown protocol": (
        "InferenceService",
        "cpu/kserve",
        lambda d: d["spec"]["predictor"]["containers"][0]["env"][0].update(value="v3"),
    ),
    "TFJob replica type": (
        "TFJob",
        "cpu/training",
        lambda d: d["spec"]["tfReplicaSpecs"].update(Boss=d["spec"]["tfReplicaSpecs"]["Chief"]),
    ),
    "TFJob restart policy": (
        "TFJob",
        "cpu/training",
        lambda d: d["spec"]["tfReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"),
    ),
    "TFJob pod template field": (
        "TFJob",
        "cpu/training",
        lambda d: d["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"].update(container=[]),
    ),
    "TFJob container renamed": (
        "TFJob",
        "cpu/training",
        lambda d: d["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
            name="trainer"
        ),
    ),
    "ServiceMonitor interval": (
        "ServiceMonitor",
        "cpu",
        lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"),
    ),
    "ServiceMonitor without endpoints": (
        "ServiceMonitor",
        "cpu",
        lambda d: d["spec"].pop("endpoints"),
    ),
    "PrometheusRule alert without expr": (
        "PrometheusRule",
        "cpu",
        lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr"),
    ),
    "PrometheusRule for": (
        "PrometheusRule",
        "cpu/kserve",
        lambda d: d["spec"]["groups"][0]["rules"][0].update({"for": "2 minutes"}),
    ),
    "PodMonitor selector": (
        "PodMonitor",
        "cpu/kserve",
        lambda d: d["spec"]["selector"].update(matchLabel={}),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validation_rejects_a_broken_copy(case: str) -> None:
    kind, overlay, damage = BROKEN[case]
    doc = _broken(kind, overlay, damage)
    with pytest.raises((ValidationError, crds.CustomResourceError)):
        k8s.validate(doc, k8s.KUBERNETES_VERSIONS[-1])
