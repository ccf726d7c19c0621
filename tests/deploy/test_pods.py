"""Pods: locked down, sized from measured figures, drained on stop, alike in both variants.

Every pod of every overlay and stand-alone manifest runs as the image's non-root
user with a read-only root filesystem, no privilege escalation and no
capabilities; whatever must be writable is a volume. Serving pods are
Guaranteed (requests = limits, whole cores) and their memory covers the
measured idle footprint plus the decoding bound the settings allow. The
KServe predictor and the Deployment describe the same pod.
"""

from __future__ import annotations

import copy

import pytest

from tests.deploy import app_facts, crds, k8s
from tests.deploy.conftest import ALL_OVERLAYS, flavor, serving_container

# Measured figures the memory limit is derived from (docs/deployment.md says where
# each comes from). The TensorFlow runtime's idle RSS is the larger; `auto` may use it.
IDLE_RSS_BYTES = 950e6  # TensorFlow runtime, shipped model, after start (bench.serve)
DECODE_BYTES_PER_PIXEL = 19  # peak decoding memory per pixel (catdog/budget.py)
SPOOL_BYTES_PER_UPLOAD = 2**20  # Starlette keeps an upload in memory up to 1 MiB
HEADROOM = 1.10


def all_pods():
    """``(source, doc, where, pod)`` for every pod in every overlay and job file."""
    for overlay in ALL_OVERLAYS:
        for doc in k8s.render(overlay):
            for where, pod in k8s.pod_specs(doc):
                yield f"overlays/{overlay}", doc, where, pod
    for path in k8s.job_files():
        for doc in k8s.load_file(path):
            for where, pod in k8s.pod_specs(doc):
                yield path.name, doc, where, pod


POD_IDS = [f"{src}:{k8s.label(doc)}:{where}" for src, doc, where, _ in all_pods()]


@pytest.mark.parametrize("pod_index", range(len(POD_IDS)), ids=POD_IDS)
def test_pod_is_locked_down(pod_index: int) -> None:
    _, doc, _, pod = list(all_pods())[pod_index]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == app_facts.image_uid()
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    for container in k8s.containers(pod):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not ctx.get("privileged"), container["name"]


@pytest.mark.parametrize("pod_index", range(len(POD_IDS)), ids=POD_IDS)
def test_pod_has_requests_limits_and_a_writable_tmp(pod_index: int) -> None:
    _, doc, _, pod = list(all_pods())[pod_index]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in k8s.containers(pod):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{container['name']} {kind}"
        if container in pod.get("initContainers", []):
            continue
        tmp = k8s.env_value(container, "TMPDIR")
        assert tmp, f"{container['name']}: TMPDIR unset (root filesystem is read-only)"
        mount = k8s.mount_for(container, tmp)
        assert mount and not mount.get("readOnly"), f"{container['name']}: {tmp} not writable"
        assert "emptyDir" in volumes[mount["name"]], "TMPDIR should be a scratch volume"
        assert volumes[mount["name"]]["emptyDir"].get("sizeLimit"), "unbounded scratch volume"


def test_serving_pod_is_guaranteed_with_whole_cores(serving: str) -> None:
    _, main = serving_container(k8s.render(serving))
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    assert requests == limits
    assert k8s.cpu_cores(limits["cpu"]).is_integer(), "thread counts round a fractional limit"


def test_memory_limit_covers_idle_footprint_and_decoding_bound(serving: str) -> None:
    """limit >= idle RSS + bytes/pixel x pixels decoded at once + spooled uploads, +10%."""
    _, main = serving_container(k8s.render(serving))
    settings = app_facts.settings_from_env(k8s.resolved_env(main))
    # An image larger than the whole budget still decodes (alone): the bound is the larger.
    pixels = max(settings.decode_pixel_budget, settings.max_pixels)
    in_flight = getattr(settings, app_facts.in_flight_cap_field())
    need = IDLE_RSS_BYTES + DECODE_BYTES_PER_PIXEL * pixels + SPOOL_BYTES_PER_UPLOAD * in_flight
    limit = k8s.memory_bytes(main["resources"]["limits"]["memory"])
    assert limit >= need * HEADROOM, f"{limit / 2**30:.2f} GiB < {need * HEADROOM / 2**30:.2f}"


def test_spool_volume_holds_every_upload_in_flight(serving: str) -> None:
    """Uploads past the in-memory part are spooled to TMPDIR: room for all admitted ones."""
    pod, main = serving_container(k8s.render(serving))
    settings = app_facts.settings_from_env(k8s.resolved_env(main))
    in_flight = getattr(settings, app_facts.in_flight_cap_field())
    mount = k8s.mount_for(main, k8s.env_value(main, "TMPDIR"))
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    size = k8s.memory_bytes(volume["emptyDir"]["sizeLimit"])
    assert size >= in_flight * settings.max_upload_bytes


def test_termination_grace_covers_the_drain(serving: str) -> None:
    """preStop sleep + uvicorn's graceful shutdown + a margin for the batch queue."""
    pod, main = serving_container(k8s.render(serving))
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    knob, default = app_facts.graceful_shutdown_knob()
    graceful = int(k8s.env_value(main, knob) or default)
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + graceful + 5


def test_gpu_pods_take_one_gpu_each_and_grow_its_memory(overlay: str) -> None:
    gpu = flavor(overlay) == "gpu"
    for doc in k8s.render(overlay):
        for where, pod in k8s.pod_specs(doc):
            for container in k8s.containers(pod, init=False):
                limits = container["resources"]["limits"]
                if not gpu:
                    assert "nvidia.com/gpu" not in limits
                    continue
                assert limits["nvidia.com/gpu"] == "1", f"{where}: one process per GPU"
                assert k8s.env_value(container, "TF_FORCE_GPU_ALLOW_GROWTH") == "true"
                tolerated = {t["key"] for t in pod.get("tolerations", [])}
                assert "nvidia.com/gpu" in tolerated, where


@pytest.mark.parametrize("overlay", ["gpu", "gpu/kserve"])
def test_gpu_service_runs_tensorflow(overlay: str) -> None:
    """LiteRT runs on the CPU only: a GPU pod must not leave the runtime to ``auto``."""
    _, main = serving_container(k8s.render(overlay))
    settings = app_facts.settings_from_env(k8s.resolved_env(main))
    assert "runtime" in settings.model_fields_set, "the GPU pod does not choose its runtime"
    assert settings.runtime == "tensorflow"


def _comparable(docs: tuple[k8s.Doc, ...]) -> tuple[k8s.Doc, k8s.Doc]:
    pod, main = serving_container(docs)
    pod, main = copy.deepcopy(pod), copy.deepcopy(main)
    ports = {p.get("name"): p["containerPort"] for p in main.pop("ports")}
    main.pop("name")
    main["env"] = sorted(
        (e for e in main.get("env", []) if e["name"] != crds.KSERVE_PROTOCOL_ENV),
        key=lambda e: e["name"],
    )
    for entry in main["env"]:
        entry.get("valueFrom", {}).get("resourceFieldRef", {}).pop("containerName", None)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = main[probe]["httpGet"]
        http["port"] = ports.get(http["port"], http["port"])
    pod.pop("containers")
    pod.pop("topologySpreadConstraints", None)
    return pod, main


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_kserve_predictor_is_the_same_pod_as_the_deployment(kind: str) -> None:
    plain_pod, plain = _comparable(k8s.render(kind))
    kserve_pod, predictor = _comparable(k8s.render(f"{kind}/kserve"))
    assert predictor == plain
    assert kserve_pod == plain_pod
