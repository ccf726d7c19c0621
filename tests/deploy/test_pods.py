"""Pods: locked down, sized from measured figures, drained on stop, alike in both variants.

Every pod of every overlay and stand-alone manifest runs as the image's non-root
user with a read-only root filesystem, no privilege escalation and no
capabilities; whatever must be writable is a volume. Serving pods are
Guaranteed (requests = limits, whole cores), run the runtime their image serves,
and their memory limit holds the worst case their own settings admit, computed
from the measured figures (``tests.deploy.measured``). The KServe predictor and
the Deployment describe the same pod.
"""

from __future__ import annotations

import copy
import math
import re

import pytest

from app.core.registry import VersionPolicy
from app.protocols.numbers import PARSER_BYTES, PARSER_BYTES_PER_BYTE
from tests.deploy import app_facts, crds, k8s, measured
from tests.deploy.conftest import ALL_OVERLAYS, flavor, serving_container

HEADROOM = 1.10  # the limit is at least this much above the worst case
FLOAT32_BYTES = 4  # one model input value
# TensorFlow on a GPU: the CUDA context and the CUDA libraries (cuDNN, cuBLAS) it maps
# into host memory. An allowance, not measured here (no GPU): docs/deployment.md.
CUDA_HOST_BYTES = 1.5 * 2**30


def pod_settings(overlay: str):
    """The serving container's settings as the app reads them: the image's ENV under the
    pod's env (thread counts resolved from the CPU limit)."""
    _, main = serving_container(k8s.render(overlay))
    env = {**app_facts.image_env(flavor(overlay)), **k8s.resolved_env(main)}
    return app_facts.settings_from_env(env)


def versions_beside(policy_text: str) -> int:
    """Versions loaded at most beside the one serving: ``latest:N`` keeps N, plus the one
    loading during a hot swap; ``specific`` loads only those named."""
    policy = VersionPolicy.parse(policy_text)
    assert policy.kind != "all", "policy `all` loads every version on the volume: no bound"
    return policy.count if policy.kind == "latest" else len(policy.versions) - 1


def uploads_held(settings, in_flight: int) -> float:
    """Memory for the request bodies held at once: the files of the images in flight, or
    the body budget (``CATDOG_BODY_BYTES_BUDGET``, at least the largest body, which is
    admitted alone), whichever holds less; each at its measured memory per byte."""
    files = measured.upload_bytes_held_per_byte() * in_flight * settings.max_upload_bytes
    budget = settings.body_bytes_budget
    if not budget:
        return files
    largest = max(app_facts.body_limit(settings, path) for path in app_facts.PREDICTION_PATHS)
    return min(files, measured.body_bytes_held_per_byte() * max(budget, largest))


def memory_parts(overlay: str) -> dict[str, float]:
    """The worst case of one serving pod, in bytes per part (docs/deployment.md, "One pod")."""
    settings = pod_settings(overlay)
    defaults = app_facts.settings_class()()
    run = measured.largest_run(settings.runtime, settings.max_batch_size, defaults.max_batch_size)
    largest = settings.max_pixels
    # Pixels decoding at once: up to the budget, but no more than one largest image per
    # thread; an image larger than the whole budget still decodes, alone.
    pixels = max(largest, min(settings.decode_pixel_budget, settings.decode_workers * largest))
    in_flight = getattr(settings, app_facts.in_flight_cap_field())
    return {
        "process under load": run.peak_rss_bytes,
        "versions beside it": versions_beside(settings.version_policy) * run.idle_rss_bytes,
        "decoding": measured.decode_bytes_per_pixel() * pixels,
        "uploads": uploads_held(settings, in_flight),
        "JSON parsing": measured.json_parsing_bytes(
            settings.json_parse_processes, settings.json_images
        ),
        "one batch": settings.max_batch_size
        * math.prod(app_facts.shipped_input_shape(flavor(overlay)))
        * FLOAT32_BYTES,
        "CUDA in host memory": CUDA_HOST_BYTES if flavor(overlay) == "gpu" else 0,
    }


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


def test_serving_pod_runs_the_runtime_its_image_serves(serving: str) -> None:
    """The pod names its runtime (its sizing is that runtime's), and the image serves it:
    LiteRT in the cpu image (no TensorFlow there), TensorFlow in the gpu image."""
    _, main = serving_container(k8s.render(serving))
    own = app_facts.settings_from_env(k8s.resolved_env(main))
    assert "runtime" in own.model_fields_set, "the pod leaves its runtime to the default"
    image = app_facts.settings_from_env(app_facts.image_env(flavor(serving)))
    assert own.runtime == image.runtime


def test_memory_limit_holds_the_worst_case_the_settings_admit(serving: str) -> None:
    """limit >= (peak RSS under load + versions loaded beside it + decoding x pixels at
    once + uploads held x images in flight + JSON parsing + one batch) x HEADROOM."""
    _, main = serving_container(k8s.render(serving))
    parts = memory_parts(serving)
    need = sum(parts.values()) * HEADROOM
    limit = k8s.memory_bytes(main["resources"]["limits"]["memory"])
    shown = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in parts.items())
    assert limit >= need, f"{limit / 2**30:.2f} GiB < {need / 2**30:.2f} GiB: {shown}"


def test_the_largest_json_fits_the_parsing_share(serving: str) -> None:
    """The parsing process, at its measured memory per byte of the largest JSON it takes
    (``CATDOG_MAX_JSON_BYTES``), stays within the part of the pod given to JSON parsing."""
    settings = pod_settings(serving)
    parser = PARSER_BYTES + PARSER_BYTES_PER_BYTE * settings.max_json_bytes
    assert parser <= memory_parts(serving)["JSON parsing"], f"{parser / 1e6:.0f} MB"


def test_body_budget_fits_the_pod(serving: str) -> None:
    """The bodies the budget lets a pod hold, at their measured memory per byte, fit
    beside everything else the pod holds at its worst."""
    _, main = serving_container(k8s.render(serving))
    settings = pod_settings(serving)
    assert settings.body_bytes_budget > 0, "no bound on the bodies held at once"
    largest = max(app_facts.body_limit(settings, path) for path in app_facts.PREDICTION_PATHS)
    bodies = measured.body_bytes_held_per_byte() * max(settings.body_bytes_budget, largest)
    others = sum(v for k, v in memory_parts(serving).items() if k != "uploads")
    limit = k8s.memory_bytes(main["resources"]["limits"]["memory"])
    assert (others + bodies) * HEADROOM <= limit, f"bodies {bodies / 1e6:.0f} MB"


def test_memory_limit_is_not_far_above_the_worst_case(serving: str) -> None:
    """Guaranteed pods reserve their limit: no more than a third above the need."""
    _, main = serving_container(k8s.render(serving))
    need = sum(memory_parts(serving).values()) * HEADROOM
    assert k8s.memory_bytes(main["resources"]["limits"]["memory"]) <= need * 4 / 3


def test_termination_grace_covers_the_drain(serving: str) -> None:
    """preStop sleep + the launcher's grace for requests in flight + a margin for the app's
    stop; counted from the start of preStop."""
    pod, main = serving_container(k8s.render(serving))
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    env = {**app_facts.image_env(flavor(serving)), **k8s.resolved_env(main)}
    grace = app_facts.graceful_shutdown_s(env)
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + grace + 5


def test_the_entrypoint_passes_only_where_to_listen_and_logging() -> None:
    """Every other knob is a setting a pod can set: a flag would override it unseen."""
    assert app_facts.entrypoint_flags() <= {"--host", "--port", "--no-access-log"}


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
    """LiteRT runs on the CPU only."""
    assert pod_settings(overlay).runtime == "tensorflow"


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


def test_sizing_table_names_the_benchmark_of_each_part() -> None:
    """Every figure the pods are sized from has a part of deploy/sizing.json written by
    the benchmark that measures it (its command), never a number typed in."""
    writers = {
        "serve": "serve",
        "uploads": "upload_memory",
        "json_parsing": "json_offload",
        "decode": "decode_memory",
    }
    table = measured.sizing()
    assert set(writers) <= set(table), sorted(table)
    for part, module in writers.items():
        assert re.search(rf"-m bench[. ]{module}\b", table[part]["command"]), table[part]
    assert measured.serve_runs() and measured.decode_bytes_per_pixel() > 0
