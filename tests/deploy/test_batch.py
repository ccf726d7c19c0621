"""The KubeRay RayJob runs ``python -m batch`` on a bucket, on the batch image.

The entrypoint is parsed by the job's own command line; the image is a build stage
of the Dockerfile that bakes in a model where the job looks for one by default; the
cluster's Ray is the version the ``batch`` extra pins; the head runs no actors.
"""

from __future__ import annotations

import copy
import shlex

import pytest
import tomllib

from batch.__main__ import parse
from batch.output import output_format
from tests.deploy import app_facts, crds, k8s

RAYJOB = k8s.JOBS / "batch-rayjob.yaml"


def _rayjob() -> k8s.Doc:
    [doc] = k8s.load_file(RAYJOB)
    return doc


def _pinned_ray() -> str:
    with open(k8s.ROOT / "pyproject.toml", "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["batch"]
    [pin] = [p for p in extra if p.startswith("ray[")]
    return pin.split("==")[1]


def test_entrypoint_is_the_batch_command_on_a_bucket() -> None:
    words = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "batch"]
    args = parse(words[3:])
    assert "://" in args.source and "://" in args.output, "a bucket in, a bucket out"
    output_format(args.output)
    assert args.address is None, "the job joins the cluster through Ray's RAY_ADDRESS"


def test_pods_run_the_batch_image_with_its_model() -> None:
    assert app_facts.shipped_input_shape("batch")  # the image bakes in a model
    env = app_facts.image_env("batch")
    assert env.get("CATDOG_RUNTIME") == "litert"
    for where, pod in k8s.pod_specs(_rayjob()):
        for container in k8s.containers(pod):
            assert container["image"].endswith("-batch"), (where, container["image"])


def test_cluster_runs_the_pinned_ray_and_no_actor_on_the_head() -> None:
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _pinned_ray()
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert k8s.cpu_cores(limits["cpu"]).is_integer(), "one actor per whole CPU"


@pytest.mark.parametrize(
    "damage",
    [
        lambda spec: spec.update(submissionMode="JobMode"),
        lambda spec: spec.update(shutdownAfterJobFinish=True),  # misspelt
        lambda spec: spec["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
        lambda spec: spec["rayClusterSpec"].update(rayVersion="latest"),
        lambda spec: spec.update(clusterSelector={"ray.io/cluster": "x"}),  # and a cluster
    ],
)
def test_validation_rejects_a_broken_rayjob(damage) -> None:  # noqa: ANN001
    doc = copy.deepcopy(_rayjob())
    damage(doc["spec"])
    with pytest.raises(crds.CustomResourceError):
        k8s.validate(doc, k8s.KUBERNETES_VERSIONS[-1])
