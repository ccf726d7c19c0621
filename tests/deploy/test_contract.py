"""The manifests use what the app really serves: env names, probe paths, port, metrics.

Every expected value is read from the app (``tests.deploy.app_facts``), never
written here, so renaming a setting, moving a route or changing the exposed port
fails these tests until the manifests follow.
"""

from __future__ import annotations

from tests.deploy import app_facts, crds, k8s
from tests.deploy.conftest import serving_container


def _serving_pods(overlay: str):
    """``(pod, container)`` for every container of the serving pod (init included)."""
    pod, _ = serving_container(k8s.render(overlay))
    return [(pod, c) for c in k8s.containers(pod)]


def test_every_catdog_env_name_is_a_setting(serving: str) -> None:
    prefix, names = app_facts.env_prefix(), app_facts.setting_env_names()
    for _, container in _serving_pods(serving):
        unknown = [n for n in k8s.env_of(container) if n.startswith(prefix) and n not in names]
        assert not unknown, f"{container['name']}: not settings of the app: {unknown}"


# Variables read by something other than the app, the image or its entrypoint.
READ_ELSEWHERE = {
    crds.KSERVE_PROTOCOL_ENV: "KServe: the protocol the predictor speaks",
    "TMPDIR": "Python's tempfile and the libraries using it",
}


def test_every_env_name_is_read_by_something(serving: str) -> None:
    """Each variable the serving pods set is a setting, an entrypoint knob, one the
    Dockerfile sets for a library, or read by a named other party."""
    known = set(app_facts.setting_env_names()) | set(app_facts.entrypoint_knobs())
    known |= app_facts.image_env_names() | set(READ_ELSEWHERE)
    for _, container in _serving_pods(serving):
        unknown = set(k8s.env_of(container)) - known
        assert not unknown, f"{container['name']}: nothing reads {sorted(unknown)}"


def test_env_sets_no_default(serving: str) -> None:
    """A setting or entrypoint knob the pod sets differs from its default (the defaults
    live once, in app/core/config.py and docker/entrypoint.sh)."""
    _, main = serving_container(k8s.render(serving))
    names = app_facts.setting_env_names()
    defaults = app_facts.settings_class()()
    knobs = app_facts.entrypoint_knobs()
    for name, value in k8s.resolved_env(main).items():
        if name in names:
            field = names[name]
            parsed = getattr(app_facts.settings_from_env({name: value}), field)
            assert parsed != getattr(defaults, field), f"{name}={value} is the default"
        elif name in knobs:
            assert value != knobs[name], f"{name}={value} is the entrypoint's default"


def test_no_service_links_in_the_settings_namespace(serving: str) -> None:
    """Service links are off: ``CATDOG_SERVICE_HOST`` and the like would share the prefix.

    Kubernetes adds such variables for every Service in the namespace, and ours are
    named like the app.
    """
    pod, _ = serving_container(k8s.render(serving))
    assert pod.get("enableServiceLinks") is False


def test_env_values_are_valid_settings(serving: str) -> None:
    """The app accepts the env as a whole (types, ranges, cross-field rules) and uses it."""
    _, main = serving_container(k8s.render(serving))
    env = k8s.resolved_env(main)
    settings = app_facts.settings_from_env(env)
    names = app_facts.setting_env_names()
    assert {names[n] for n in env if n in names} <= settings.model_fields_set


def test_thread_settings_follow_the_cpu_limit(serving: str) -> None:
    """Every thread-count setting is set from the container's own ``limits.cpu``."""
    _, main = serving_container(k8s.render(serving))
    env = k8s.env_of(main)
    thread_settings = [
        name
        for name, field in app_facts.setting_env_names().items()
        if field.endswith(("_threads", "_workers"))
    ]
    assert thread_settings, "the app has no thread settings to match to the CPU limit"
    for name in thread_settings:
        assert name in env, f"{name} is not set: the app would use every core of the node"
        ref = env[name].get("valueFrom", {}).get("resourceFieldRef", {})
        assert ref.get("resource") == "limits.cpu", f"{name}: {env[name]}"
        assert ref.get("containerName") == main["name"]


def test_model_dir_is_on_the_read_only_model_volume(serving: str) -> None:
    prefix_names = {v: k for k, v in app_facts.setting_env_names().items()}
    _, main = serving_container(k8s.render(serving))
    model_dir = k8s.env_value(main, prefix_names["model_dir"])
    mount = k8s.mount_for(main, model_dir)
    assert mount is not None and mount.get("readOnly") is True, model_dir


def test_container_ports_are_the_ones_the_image_serves(serving: str) -> None:
    """REST first, on the entrypoint's port; ``grpc`` on the port of the image's gRPC
    address; both exposed by the image, and not moved by the pod's env."""
    exposed = app_facts.exposed_ports()
    _, main = serving_container(k8s.render(serving))
    ports = [p["containerPort"] for p in main["ports"]]
    assert set(ports) <= exposed and len(set(ports)) == len(ports)
    assert ports[0] == app_facts.rest_port(), "REST first, from the entrypoint"
    named = {p.get("name"): p["containerPort"] for p in main["ports"]}
    assert named.get("grpc") == app_facts.grpc_port(), named
    [grpc_env] = [e for e, f in app_facts.setting_env_names().items() if f == "grpc_address"]
    assert grpc_env not in k8s.env_of(main)
    for knob, value in app_facts.entrypoint_knobs().items():
        if knob in k8s.env_of(main):
            assert k8s.env_value(main, knob) == value


def _probe_target(container: k8s.Doc, probe: str) -> tuple[str, int]:
    http = container[probe]["httpGet"]
    port = http["port"]
    if isinstance(port, str):
        [port] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return http["path"], port


def test_readiness_probe_is_the_route_that_waits_for_the_model(serving: str) -> None:
    _, main = serving_container(k8s.render(serving))
    path, port = _probe_target(main, "readinessProbe")
    assert path in app_facts.probes().unavailable_without_model, path
    assert port in app_facts.exposed_ports()


def test_liveness_and_startup_probes_answer_without_a_model(serving: str) -> None:
    """Liveness must not depend on the model (a reload must not get the pod killed)."""
    _, main = serving_container(k8s.render(serving))
    for probe in ("livenessProbe", "startupProbe"):
        path, port = _probe_target(main, probe)
        assert path in app_facts.probes().ok_without_model, f"{probe}: {path}"
        assert port in app_facts.exposed_ports()


def test_scraped_path_serves_the_metrics_the_autoscaler_uses(serving: str) -> None:
    docs = k8s.render(serving)
    monitors = k8s.find(docs, "ServiceMonitor") + k8s.find(docs, "PodMonitor")
    [monitor] = monitors
    endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
    [hpa] = k8s.find(docs, "HorizontalPodAutoscaler")
    wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    for endpoint in endpoints:
        content_type, body = app_facts.scrape(endpoint["path"])
        assert content_type.startswith("text/plain"), content_type
        for name in wanted:
            assert f"# TYPE {name} " in body, f"{endpoint['path']} does not export {name}"
