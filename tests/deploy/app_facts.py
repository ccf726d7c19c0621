"""What the manifests must agree with, read from the app, its settings and the images.

Nothing here names a route, a setting or a metric: env names come from
``Settings.model_fields`` (with the settings' own env prefix), paths from the
app's route table (its OpenAPI paths) and from how each path answers before a model is loaded,
metric names from a fresh ``Metrics().registry``, the port, user, each image's
environment and baked-in model folder from the Dockerfile, and the knobs of the
container entrypoint from ``docker/entrypoint.sh``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.k8s import ROOT

DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DISTRIBUTE_PY = ROOT / "training" / "distribute.py"
TRAIN_CLI = ROOT / "training" / "__main__.py"


@dataclass(frozen=True)
class Probes:
    """Paths by how they answer on an app whose model is not loaded yet."""

    ok_without_model: frozenset[str]  # GET answers 200: liveness / startup
    unavailable_without_model: frozenset[str]  # GET answers 503: readiness


# ---------------------------------------------------------------- settings


@functools.cache
def settings_class() -> Any:
    """``app.core.config.Settings``."""
    from app.core.config import Settings

    return Settings


# One path of each prediction route the body limit tells apart (``app.core.gate``).
PREDICTION_PATHS = ("/predict", "/predict/batch", "/v1/models/catdog:predict")


def body_limit(settings: Any, path: str) -> int:
    """The largest body a prediction path accepts under ``settings``."""
    from app.core.gate import body_limit as limit

    result = limit(settings, path)
    assert result is not None, f"{path} is not a prediction path"
    return result


def env_prefix() -> str:
    """The settings' environment prefix (``CATDOG_``)."""
    return settings_class().model_config.get("env_prefix", "")


def setting_env_names() -> dict[str, str]:
    """Env name -> settings field name, for every setting."""
    prefix = env_prefix()
    return {f"{prefix}{name}".upper(): name for name in settings_class().model_fields}


def settings_from_env(env: dict[str, str]) -> Any:
    """A ``Settings`` built from a container's env (only the app's own variables)."""
    names = setting_env_names()
    return settings_class()(**{names[k]: v for k, v in env.items() if k in names})


def default(field: str) -> Any:
    """A setting's default value."""
    return settings_class().model_fields[field].default


# ---------------------------------------------------------------- the app


@functools.cache
def make_app() -> Any:
    """The FastAPI app, built as ``app.main`` builds it, lifespan not run (no model)."""
    from app.main import create_app

    if inspect.signature(create_app).parameters:
        return create_app(settings_class()())
    return create_app()


@functools.cache
def all_routes() -> dict[str, frozenset[str]]:
    """The app's route table: path -> HTTP methods (upper case), from its OpenAPI paths."""
    paths = make_app().openapi()["paths"]
    return {path: frozenset(m.upper() for m in methods) for path, methods in paths.items()}


def get_routes() -> frozenset[str]:
    """Paths the app answers with GET."""
    return frozenset(path for path, methods in all_routes().items() if "GET" in methods)


@functools.cache
def probes() -> Probes:
    """GET every parameterless GET route once, before any model is loaded."""
    from fastapi.testclient import TestClient

    client = TestClient(make_app(), raise_server_exceptions=False)
    ok, unavailable = set(), set()
    for path in sorted(get_routes()):
        if "{" in path:
            continue
        status = client.get(path).status_code
        if status == 200:
            ok.add(path)
        elif status == 503:
            unavailable.add(path)
    return Probes(frozenset(ok), frozenset(unavailable))


def scrape(path: str) -> tuple[str, str]:
    """``(content type, body)`` of a GET on the app (no model loaded)."""
    from fastapi.testclient import TestClient

    response = TestClient(make_app(), raise_server_exceptions=False).get(path)
    assert response.status_code == 200, f"GET {path}: {response.status_code}"
    return response.headers.get("content-type", ""), response.text


@functools.cache
def metric_types() -> dict[str, str]:
    """Metric family name -> type (gauge, counter, histogram...) of a fresh registry."""
    from app.core.metrics import Metrics

    return {family.name: family.type for family in Metrics().registry.collect()}


# ---------------------------------------------------------------- images


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per Dockerfile instruction, continuations joined."""
    joined, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = []
    for line in joined:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exposed_ports() -> set[int]:
    """Every port the Dockerfile EXPOSEs."""
    return {
        int(p.split("/")[0])
        for word, rest in _instructions(DOCKERFILE)
        if word == "EXPOSE"
        for p in rest.split()
    }


def _stage_envs() -> dict[str, dict[str, str]]:
    """Each named build stage's ``ENV``, including what it inherits from a named stage."""
    stages: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for word, rest in _instructions(DOCKERFILE):
        if word == "FROM":
            words = rest.split()
            parent = next((w for w in words if not w.startswith("--")), "")
            current = dict(stages.get(parent, {}))
            if len(words) >= 3 and words[-2].upper() == "AS":
                stages[words[-1]] = current
        elif word == "ENV":
            for token in shlex.split(rest):
                if "=" in token:
                    key, value = token.split("=", 1)
                    current[key] = value
    return stages


def image_env(target: str) -> dict[str, str]:
    """The environment the Dockerfile gives an image (``--target``): its stage's and
    every named stage's it builds on."""
    stages = _stage_envs()
    assert target in stages, f"no build stage {target!r} in the Dockerfile: {sorted(stages)}"
    return stages[target]


def image_env_names() -> set[str]:
    """Every variable some stage of the Dockerfile sets."""
    return {name for env in _stage_envs().values() for name in env}


def image_uid() -> int:
    """The numeric user the images run as (``useradd --uid``)."""
    for word, rest in _instructions(DOCKERFILE):
        match = re.search(r"useradd\b.*--uid\s+(\d+)", rest) if word == "RUN" else None
        if match:
            return int(match[1])
    raise AssertionError("no useradd --uid in the Dockerfile")


def entrypoint_knobs() -> dict[str, str]:
    """``${NAME:-default}`` variables the container entrypoint reads."""
    return dict(re.findall(r"\$\{(\w+):-([^}]*)\}", ENTRYPOINT.read_text()))


def rest_port() -> int:
    """The port the entrypoint serves REST on (its one numeric knob the image exposes)."""
    [port] = [int(v) for v in entrypoint_knobs().values() if v.isdigit()]
    assert port in exposed_ports(), port
    return port


def grpc_port() -> int:
    """The port of the images' gRPC address (``CATDOG_GRPC_ADDRESS``), which they expose."""
    [name] = [e for e, f in setting_env_names().items() if f == "grpc_address"]
    port = int(image_env("cpu")[name].rpartition(":")[2])
    assert port in exposed_ports(), port
    return port


# ---------------------------------------------------------------- training


def _literal(path: Path, name: str) -> Any:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


def training_strategies() -> tuple[str, ...]:
    """``training.distribute.STRATEGIES`` (read from the source: importing it loads TensorFlow)."""
    return tuple(_literal(DISTRIBUTE_PY, "STRATEGIES"))


def training_reads_tf_config() -> bool:
    """Whether the training code reads the ``TF_CONFIG`` the operator injects."""
    return "TF_CONFIG" in DISTRIBUTE_PY.read_text()


def train_options() -> set[str]:
    """Option strings the training CLI defines (``--data``, ``--strategy``, ...)."""
    tree = ast.parse(TRAIN_CLI.read_text())
    return {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
    }


def train_commands() -> set[str]:
    """Sub-commands of ``python -m training`` (``add_parser`` names)."""
    tree = ast.parse(TRAIN_CLI.read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_parser"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def graceful_shutdown_field() -> str:
    """The setting for the seconds requests in flight get after SIGTERM."""
    every = list(settings_class().model_fields)
    fields = [f for f in every if "graceful" in f]
    assert len(fields) == 1, f"no single *graceful* setting in {every}"
    return fields[0]


def graceful_shutdown_s(env: dict[str, str]) -> float:
    """Seconds the image's launcher gives requests in flight after SIGTERM, in a container
    with ``env`` (its own and the image's): the setting, which no flag overrides."""
    return float(getattr(settings_from_env(env), graceful_shutdown_field()))


def entrypoint_flags() -> set[str]:
    """The ``--flags`` the container entrypoint passes to the launcher."""
    return set(re.findall(r"(--[\w-]+)", ENTRYPOINT.read_text()))


def shipped_input_shape(target: str) -> tuple[int, int, int]:
    """``(height, width, 3)`` of the model an image serves by default: the folder the
    Dockerfile copies to the image's model folder, its highest version."""
    from catdog.contract import ModelContract
    from catdog.runtimes import latest_version

    by_field = {field: env for env, field in setting_env_names().items()}
    model_dir = image_env(target)[by_field["model_dir"]]
    sources = [
        rest.split()[0]
        for word, rest in _instructions(DOCKERFILE)
        if word == "COPY" and rest.split()[-1].rstrip("/") == model_dir.rstrip("/")
    ]
    assert sources, f"the Dockerfile copies no model to {model_dir}"
    return ModelContract.read(latest_version(ROOT / sources[0])).input_shape


def in_flight_cap_field() -> str:
    """The setting that caps the images a pod admits at once (503 beyond it)."""
    fields = [f for f in settings_class().model_fields if f.startswith("max_") and "in_flight" in f]
    assert len(fields) == 1, (
        f"no single max_*in_flight* setting in {list(settings_class().model_fields)}"
    )
    return fields[0]
