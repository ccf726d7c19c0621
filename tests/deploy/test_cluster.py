"""What a real cluster does with the manifests that a schema cannot see.

Each test here stands for a way the rendered overlays went wrong against the
controllers that read them (Kubernetes, KServe, the Training Operator,
kube-prometheus-stack): a pod's QoS class is its *whole* pod's, init containers
included; KServe owns the HPA named after its predictor; ``spec.replicas`` beside
an HPA is re-applied on every ``kubectl apply``; a GPU pod must refuse to start
without its GPU; tags must not move; monitors must carry the label Prometheus
selects on. Broken copies show each check rejects what it should.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomllib

from tests.deploy import app_facts, k8s
from tests.deploy.conftest import ALL_OVERLAYS, SERVING, TRAINING, flavor, serving_container

# Names KServe gives the HPA it makes for a predictor (RawDeployment): `<isvc>-predictor`
# since 0.9, `<isvc>-predictor-default` before.
KSERVE_HPA_NAMES = ("{}-predictor", "{}-predictor-default")
# The label kube-prometheus-stack's Prometheus selects monitors and rules on (its
# serviceMonitorSelector / podMonitorSelector / ruleSelector default to the release).
PROMETHEUS_RELEASE_LABEL = "release"
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MUTABLE_TAGS = {"latest", "cpu", "gpu", "train", "stable", "main"}
ZONE, HOST = "topology.kubernetes.io/zone", "kubernetes.io/hostname"
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------- QoS


def qos_class(pod: k8s.Doc) -> str:
    """The pod's QoS class as the kubelet computes it (``GetPodQOS``): over every
    container, init containers included. Guaranteed when each one has cpu and memory
    limits and requests equal to them; BestEffort when none has any; else Burstable."""
    any_set, guaranteed = False, True
    for container in k8s.containers(pod):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            limit = limits.get(name)
            request = requests.get(name, limit)  # an unset request defaults to the limit
            if limit is None or str(request) != str(limit):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def test_serving_pod_is_guaranteed_as_a_whole(serving: str) -> None:
    """docs/deployment.md promises Guaranteed pods (exclusive cores with the static CPU
    manager, evicted last); one init container with requests below limits breaks it."""
    pod, _ = serving_container(k8s.render(serving))
    assert qos_class(pod) == "Guaranteed", [
        (c["name"], c.get("resources")) for c in k8s.containers(pod)
    ]


def test_qos_check_sees_init_containers() -> None:
    pod, _ = serving_container(k8s.render("cpu"))
    pod = copy.deepcopy(pod)
    pod["initContainers"][0]["resources"]["requests"]["cpu"] = "100m"
    assert qos_class(pod) == "Burstable"
    pod["initContainers"][0].pop("resources")
    assert qos_class(pod) == "Burstable"


# ---------------------------------------------------------------- autoscaling


def kserve_owned_hpa_names(docs: tuple[k8s.Doc, ...]) -> set[str]:
    """HPA names KServe uses for the InferenceServices of a render."""
    isvcs = [d["metadata"]["name"] for d in k8s.find(docs, "InferenceService")]
    return {pattern.format(name) for name in isvcs for pattern in KSERVE_HPA_NAMES}


def test_our_hpa_is_not_one_kserve_owns(serving: str) -> None:
    """KServe deletes (<= 0.15.0) or adopts then deletes (>= 0.15.1) an HPA with its
    predictor's name when the autoscaler class is external (kserve/kserve#4312)."""
    docs = k8s.render(serving)
    owned = kserve_owned_hpa_names(docs)
    for hpa in k8s.find(docs, "HorizontalPodAutoscaler"):
        assert hpa["metadata"]["name"] not in owned, f"KServe owns {hpa['metadata']['name']}"


def test_kserve_hpa_name_check_bites() -> None:
    docs = copy.deepcopy(k8s.render("cpu/kserve"))
    [hpa] = k8s.find(docs, "HorizontalPodAutoscaler")
    hpa["metadata"]["name"] = "catdog-predictor"
    assert hpa["metadata"]["name"] in kserve_owned_hpa_names(docs)


def replicas_beside_hpa(docs: tuple[k8s.Doc, ...]) -> list[str]:
    """Deployments an HPA scales that still set ``spec.replicas``."""
    scaled = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in k8s.find(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    }
    return [
        k8s.label(d)
        for d in k8s.find(docs, "Deployment")
        if d["metadata"]["name"] in scaled and "replicas" in d["spec"]
    ]


def test_no_replicas_beside_an_hpa(serving: str) -> None:
    """Every `kubectl apply -k` would send the count again and undo the HPA's scaling."""
    assert replicas_beside_hpa(k8s.render(serving)) == []


def test_replicas_check_bites() -> None:
    docs = copy.deepcopy(k8s.render("cpu"))
    k8s.one(docs, "Deployment")["spec"]["replicas"] = 2
    assert replicas_beside_hpa(docs) == ["Deployment/catdog"]


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_kserve_rolls_out_like_the_deployment(kind: str) -> None:
    """Without deploymentStrategy KServe applies 25% surge / 25% unavailable."""
    strategy = k8s.one(k8s.render(kind), "Deployment")["spec"]["strategy"]
    isvc = k8s.one(k8s.render(f"{kind}/kserve"), "InferenceService")
    assert isvc["spec"]["predictor"].get("deploymentStrategy") == strategy
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_pods_spread_over_zones_and_hosts(serving: str) -> None:
    pod, _ = serving_container(k8s.render(serving))
    keys = [c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])]
    assert ZONE in keys and HOST in keys, keys


# ---------------------------------------------------------------- GPU


def gpu_pods(docs: tuple[k8s.Doc, ...]):
    """``(doc, where, pod, container)`` for each container that takes a GPU."""
    for doc in docs:
        for where, pod in k8s.pod_specs(doc):
            for container in k8s.containers(pod, init=False):
                if GPU in container.get("resources", {}).get("limits", {}):
                    yield doc, where, pod, container


def test_gpu_pods_name_the_nvidia_runtime_class(overlay: str) -> None:
    found = list(gpu_pods(k8s.render(overlay)))
    assert bool(found) == (flavor(overlay) == "gpu")
    for doc, where, pod, _ in found:
        assert pod.get("runtimeClassName"), f"{k8s.label(doc)} {where}: no runtimeClassName"


@pytest.mark.parametrize("overlay", [o for o in SERVING if flavor(o) == "gpu"])
def test_gpu_service_refuses_to_start_without_its_gpu(overlay: str) -> None:
    """The GPU pod sets the setting that makes startup fail when TensorFlow sees no GPU
    (tests/app/test_require_gpu.py runs it): it never goes Ready on the CPU."""
    [(_, _, _, container)] = list(gpu_pods(k8s.render(overlay)))
    env = {**app_facts.image_env("gpu"), **k8s.resolved_env(container)}
    settings = app_facts.settings_from_env(env)
    assert settings.require_gpu is True
    assert settings.runtime == "tensorflow"


# ---------------------------------------------------------------- images, monitors, jobs


def project_version() -> str:
    with open(k8s.ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def mutable_image(image: str) -> bool:
    """True for an image reference a later push can change: no digest, and a tag that
    is missing, a moving name, or without the release's version."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return False
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return True
    return tag in MUTABLE_TAGS or not tag.startswith(project_version())


def _all_images():
    sources = [(f"overlays/{o}", k8s.render(o)) for o in ALL_OVERLAYS]
    sources += [(p.name, k8s.load_file(p)) for p in k8s.job_files()]
    for where, docs in sources:
        for doc in docs:
            for _, pod in k8s.pod_specs(doc):
                for container in k8s.containers(pod):
                    yield where, container["image"]


def test_images_cannot_be_overwritten() -> None:
    moving = [f"{where}: {image}" for where, image in _all_images() if mutable_image(image)]
    assert not moving, moving


def test_image_check_bites() -> None:
    v = project_version()
    assert mutable_image("catdog:cpu") and mutable_image("catdog") and mutable_image("c:latest")
    assert not mutable_image(f"catdog:{v}-cpu")
    assert not mutable_image("registry.example:5000/catdog@sha256:" + "a" * 64)


def test_monitors_carry_the_label_prometheus_selects(overlay: str) -> None:
    for doc in k8s.render(overlay):
        if doc["kind"] in MONITORING_KINDS:
            labels = doc["metadata"].get("labels", {})
            assert PROMETHEUS_RELEASE_LABEL in labels, k8s.label(doc)


@pytest.mark.parametrize("overlay", TRAINING)
def test_training_job_is_bounded_and_gang_scheduled(overlay: str) -> None:
    """A finished job is cleaned up, a hung one stopped, and all replicas start together
    (a partial set would hold GPUs waiting for peers that cannot be placed)."""
    spec = k8s.one(k8s.render(overlay), "TFJob")["spec"]
    policy = spec["runPolicy"]
    assert policy.get("ttlSecondsAfterFinished", 0) > 0
    assert policy.get("activeDeadlineSeconds", 0) > 0
    replicas = sum(r.get("replicas", 1) for r in spec["tfReplicaSpecs"].values())
    assert policy.get("schedulingPolicy", {}).get("minAvailable") == replicas


# ---------------------------------------------------------------- the volume's owner

SCRIPT = k8s.K8S / "common" / "seed_models.py"


def test_seeding_a_root_owned_volume_says_what_to_do() -> None:
    """A ReadWriteMany volume whose root stays root's (fsGroup ignored): the init
    container runs as the image's uid and must fail with the fix, not a traceback."""
    uid = app_facts.image_uid()
    top = Path(tempfile.mkdtemp(prefix="catdog-seed-"))
    try:
        source = top / "image" / "1"
        source.mkdir(parents=True)
        (source / "saved_model.pb").write_text("x")
        volume = top / "volume"
        volume.mkdir()
        os.chmod(top, 0o755)
        for path in (top / "image", source, source / "saved_model.pb"):
            os.chmod(path, 0o755)
        os.chmod(volume, 0o555)  # owned by whoever runs the tests, not writable by others
        # The image's uid may not read the checkout (a clone in a 0700 folder): a copy.
        script = top / SCRIPT.name
        shutil.copyfile(SCRIPT, script)
        os.chmod(script, 0o644)
        as_user = {"user": uid, "group": uid} if os.getuid() == 0 else {}
        if not as_user and os.access(volume, os.W_OK):
            pytest.skip("this user can write a read-only folder: cannot stage the failure")
        result = subprocess.run(
            [sys.executable if not as_user else "/usr/bin/python3", str(script)]
            + [str(top / "image"), str(volume / "catdog")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **as_user,
        )
    finally:
        os.chmod(top / "volume", 0o755)
        shutil.rmtree(top, ignore_errors=True)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "cannot seed" in result.stderr and "docs/deployment.md" in result.stderr
