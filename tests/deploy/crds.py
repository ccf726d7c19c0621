"""JSON schemas for the custom resources in ``deploy/k8s``, checked without their CRDs.

No CRD is installed where the tests run, and kubernetes-validate knows only
built-in kinds, so each custom kind used here gets a schema written for these
tests: the fields the operators require (as their CRDs mark them), the enums they
accept, and ``additionalProperties: false`` on the objects these manifests fill,
so a misspelt field fails. Wherever a custom resource embeds a Kubernetes object
(a pod template, a label selector) that part is checked against the strict
Kubernetes schema of the same version kubernetes-validate ships.

Kinds: KServe ``InferenceService`` (serving.kserve.io/v1beta1, custom predictor),
Kubeflow Training Operator ``TFJob`` (kubeflow.org/v1), KubeRay ``RayJob``
(ray.io/v1, with the RayCluster it creates), Prometheus Operator
``ServiceMonitor`` and ``PodMonitor`` (monitoring.coreos.com/v1).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

Doc = dict[str, Any]

_DEFS = "https://kubernetes.io/api/_definitions.json"


def k8s(name: str) -> Doc:
    """A reference to a Kubernetes definition, e.g. ``io.k8s.api.core.v1.PodSpec``."""
    return {"$ref": f"{_DEFS}#/$defs/{name}"}


def _object(properties: Doc, required: tuple[str, ...] = ()) -> Doc:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _resource(group_version: str, kind: str, spec: Doc, title: str) -> Doc:
    return {
        "title": title,
        **_object(
            {
                "apiVersion": {"const": group_version},
                "kind": {"const": kind},
                "metadata": {
                    "allOf": [k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")],
                    "required": ["name"],
                },
                "spec": spec,
            },
            ("apiVersion", "kind", "metadata", "spec"),
        ),
    }


DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
COUNT = {"type": "integer", "minimum": 0}

# ---------------------------------------------------------------- KServe

# A predictor is a PodSpec (inline) plus these deployment settings (ComponentExtensionSpec).
PREDICTOR_EXTENSION = _object(
    {
        "minReplicas": COUNT,
        "maxReplicas": COUNT,
        "scaleTarget": COUNT,
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "scaleMetricType": {"enum": ["Utilization", "AverageValue", "Value"]},
        "containerConcurrency": COUNT,
        "timeout": COUNT,
        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "deploymentStrategy": k8s("io.k8s.api.apps.v1.DeploymentStrategy"),
        "logger": {"type": "object"},
        "batcher": {"type": "object"},
        "autoScaling": {"type": "object"},
    }
)
# One of these, or PodSpec containers (a custom predictor), says what serves.
PREDICTOR_IMPLEMENTATIONS = frozenset(
    {
        "model",
        "sklearn",
        "xgboost",
        "tensorflow",
        "pytorch",
        "triton",
        "onnx",
        "huggingface",
        "pmml",
        "lightgbm",
        "paddle",
        "storageUris",
        "workerSpec",
    }
)
KSERVE_CONTAINER = "kserve-container"  # the container KServe treats as the predictor
KSERVE_PROTOCOL_ENV = "PROTOCOL"  # a custom predictor's protocol: v1 or v2
KSERVE_PROTOCOLS = ("v1", "v2")

INFERENCE_SERVICE = _resource(
    "serving.kserve.io/v1beta1",
    "InferenceService",
    _object(
        {
            "predictor": {"type": "object"},  # checked by check_predictor
            "transformer": {"type": "object"},
            "explainer": {"type": "object"},
        },
        ("predictor",),
    ),
    "KServe InferenceService serving.kserve.io/v1beta1",
)


def predictor_pod_spec(predictor: Doc) -> Doc:
    """The PodSpec part of a predictor (everything but its extension and implementation)."""
    skip = set(PREDICTOR_EXTENSION["properties"]) | PREDICTOR_IMPLEMENTATIONS
    return {k: v for k, v in predictor.items() if k not in skip}


def check_predictor(predictor: Doc, version: str) -> list[str]:
    """What KServe's admission would refuse in a custom predictor, as messages."""
    problems = _errors(
        {k: v for k, v in predictor.items() if k in PREDICTOR_EXTENSION["properties"]},
        PREDICTOR_EXTENSION,
        version,
        "spec.predictor",
    )
    problems += _errors(
        predictor_pod_spec(predictor), k8s("io.k8s.api.core.v1.PodSpec"), version, "spec.predictor"
    )
    implementations = PREDICTOR_IMPLEMENTATIONS & set(predictor)
    if predictor.get("containers") and implementations:
        problems.append(f"custom containers and {sorted(implementations)} are exclusive")
    named = [c for c in predictor.get("containers", []) if c.get("name") == KSERVE_CONTAINER]
    if predictor.get("containers") and len(named) != 1:
        problems.append(f"a custom predictor needs exactly one container {KSERVE_CONTAINER!r}")
    for container in named:
        for entry in container.get("env", []):
            if entry["name"] == KSERVE_PROTOCOL_ENV and entry.get("value") not in KSERVE_PROTOCOLS:
                problems.append(f"{KSERVE_PROTOCOL_ENV} must be one of {KSERVE_PROTOCOLS}")
    low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
    if low is not None and high is not None and high < low:
        problems.append(f"maxReplicas {high} < minReplicas {low}")
    return problems


# ---------------------------------------------------------------- Kubeflow

TF_REPLICA_TYPES = ("Chief", "Worker", "PS", "Evaluator", "Master")
TFJOB_CONTAINER = "tensorflow"  # the operator sets TF_CONFIG and the port on this one
TFJOB = _resource(
    "kubeflow.org/v1",
    "TFJob",
    _object(
        {
            "runPolicy": _object(
                {
                    "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                    "ttlSecondsAfterFinished": COUNT,
                    "activeDeadlineSeconds": COUNT,
                    "backoffLimit": COUNT,
                    "schedulingPolicy": {"type": "object"},
                    "suspend": {"type": "boolean"},
                    "managedBy": {"type": "string"},
                }
            ),
            "successPolicy": {"enum": ["", "AllWorkers"]},
            "enableDynamicWorker": {"type": "boolean"},
            "tfReplicaSpecs": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"enum": list(TF_REPLICA_TYPES)},
                "additionalProperties": _object(
                    {
                        "replicas": COUNT,
                        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                        "template": k8s("io.k8s.api.core.v1.PodTemplateSpec"),
                    },
                    ("template",),
                ),
            },
        },
        ("tfReplicaSpecs",),
    ),
    "Kubeflow TFJob kubeflow.org/v1",
)

# ---------------------------------------------------------------- KubeRay

TEMPLATE = k8s("io.k8s.api.core.v1.PodTemplateSpec")
_GROUP = {"rayStartParams": STRING_MAP, "template": TEMPLATE}
_WORKERS = {"groupName": {"type": "string", "minLength": 1}, "idleTimeoutSeconds": COUNT}
_WORKERS.update({k: COUNT for k in ("replicas", "minReplicas", "maxReplicas", "numOfHosts")})
RAY_CLUSTER_SPEC = _object(
    {
        "rayVersion": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": _object(
            {**_GROUP, "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}},
            ("template",),
        ),
        "workerGroupSpecs": {
            "type": "array",
            "items": _object({**_GROUP, **_WORKERS}, ("groupName", "template")),
        },
    },
    ("headGroupSpec",),
)
_RAY_JOB_SPEC = {
    "entrypoint": {"type": "string", "minLength": 1},
    "runtimeEnvYAML": {"type": "string"},
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
    "rayClusterSpec": RAY_CLUSTER_SPEC,
    "clusterSelector": STRING_MAP,
    "submitterPodTemplate": TEMPLATE,
    "submitterConfig": _object({"backoffLimit": COUNT}),
    "entrypointNumCpus": {"type": "number", "minimum": 0},
    **{k: {"type": "boolean"} for k in ("shutdownAfterJobFinishes", "suspend")},
    **{k: COUNT for k in ("ttlSecondsAfterFinished", "backoffLimit")},
}
ONE_CLUSTER = [{"required": [k]} for k in ("rayClusterSpec", "clusterSelector")]
RAY_JOB = _resource(
    "ray.io/v1",
    "RayJob",
    {**_object(_RAY_JOB_SPEC), "oneOf": ONE_CLUSTER},
    "KubeRay RayJob ray.io/v1",
)

# ---------------------------------------------------------------- Prometheus Operator

_SCRAPE = {
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https"]},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "honorLabels": {"type": "boolean"},
    "params": {"type": "object"},
    "relabelings": {"type": "array"},
    "metricRelabelings": {"type": "array"},
}
SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _object(
        {
            "selector": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": COUNT,
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    **_object(
                        {
                            **_SCRAPE,
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                        }
                    ),
                    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                },
            },
        },
        ("selector", "endpoints"),
    ),
    "Prometheus Operator ServiceMonitor monitoring.coreos.com/v1",
)
POD_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    _object(
        {
            "selector": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": COUNT,
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    **_object(
                        {**_SCRAPE, "port": {"type": "string"}, "portNumber": {"type": "integer"}}
                    ),
                    "anyOf": [{"required": ["port"]}, {"required": ["portNumber"]}],
                },
            },
        },
        ("selector", "podMetricsEndpoints"),
    ),
    "Prometheus Operator PodMonitor monitoring.coreos.com/v1",
)

_RULE = {
    "oneOf": [
        _object(
            {
                "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                "expr": {"type": ["string", "integer"]},
                "for": DURATION,
                "keep_firing_for": DURATION,
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
            ("alert", "expr"),
        ),
        _object(
            {
                "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                "expr": {"type": ["string", "integer"]},
                "labels": STRING_MAP,
            },
            ("record", "expr"),
        ),
    ]
}
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _object(
        {
            "groups": {
                "type": "array",
                "items": _object(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "interval": DURATION,
                        "limit": COUNT,
                        "partial_response_strategy": {"type": "string"},
                        "rules": {"type": "array", "items": _RULE},
                    },
                    ("name", "rules"),
                ),
            }
        }
    ),
    "Prometheus Operator PrometheusRule monitoring.coreos.com/v1",
)

SCHEMAS: dict[str, Doc] = {
    "InferenceService": INFERENCE_SERVICE,
    "TFJob": TFJOB,
    "RayJob": RAY_JOB,
    "ServiceMonitor": SERVICE_MONITOR,
    "PodMonitor": POD_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
}

# ---------------------------------------------------------------- validation


class CustomResourceError(ValueError):
    """A custom resource breaks its schema or its operator's rules."""


@functools.cache
def _registry(version: str) -> Registry:
    """The strict Kubernetes definitions of ``version``, from kubernetes-validate's files."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = folder / f"v{version.lstrip('v')}-local-strict" / "_definitions.json"
    definitions = json.loads(path.read_text())
    return Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))


def _errors(instance: Any, schema: Doc, version: str, where: str) -> list[str]:
    validator = Draft202012Validator(schema, registry=_registry(version))
    return [
        f"{where}.{'.'.join(map(str, error.absolute_path))}: {error.message}".replace(". :", ":")
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


def validate(doc: Doc, version: str) -> None:
    """Raise ``CustomResourceError`` listing everything wrong with a custom resource."""
    problems = _errors(doc, SCHEMAS[doc["kind"]], version, doc["kind"])
    if doc["kind"] == "InferenceService" and not problems:
        problems = check_predictor(doc["spec"]["predictor"], version)
    if doc["kind"] == "TFJob" and not problems:
        for replica, spec in doc["spec"]["tfReplicaSpecs"].items():
            names = [c["name"] for c in spec["template"]["spec"]["containers"]]
            if TFJOB_CONTAINER not in names:
                problems.append(f"{replica}: no container named {TFJOB_CONTAINER!r} ({names})")
    if problems:
        raise CustomResourceError("; ".join(problems))
