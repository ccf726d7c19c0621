"""Static checks of the container setup: compose files, Prometheus config, Dockerfile.

Nothing is built or started; the files are parsed (YAML with PyYAML, the
Dockerfile line by line) and checked against what the README promises: a CPU
service with a health check and a read-only model mount, a GPU service and a
training service behind profiles, Prometheus scraping ``/metrics``, replicas
behind a load balancer, non-root images whose COPY sources exist.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
REPLICAS = ROOT / "docker" / "compose.replicas.yml"
DOCKERFILE = ROOT / "Dockerfile"
OPTIONAL_SOURCES = {  # made by training, not kept in git
    "models/catdog": "no exported model yet (python -m training export ... --out models/catdog)",
}


# ---------------------------------------------------------------- helpers


class Reset:
    """Compose's ``!reset`` tag: drop the value inherited from the files before."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """A safe loader that also understands compose's ``!reset`` and ``!override`` tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node))
    return Reset(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _reset)


def load_yaml(path: Path) -> dict[str, Any]:
    """A compose or Prometheus file as plain Python data."""
    with open(path) as f:
        return yaml.load(f, Loader=ComposeLoader)


def environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a mapping, whether written as a mapping or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def volumes(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A service's short-syntax volumes: container path -> (host path, mode)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def container_ports(service: dict[str, Any]) -> list[int]:
    """The container side of every ``HOST:CONTAINER`` port mapping."""
    return [int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in service.get("ports", [])]


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``deploy.resources.reservations.devices`` entries of a service."""
    deploy = service.get("deploy") or {}
    return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []


def assert_nvidia_gpu(service: dict[str, Any]) -> None:
    """The service reserves at least one NVIDIA GPU."""
    devices = gpu_devices(service)
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


class Stage:
    """One ``FROM ... AS name`` stage of the Dockerfile, as (instruction, arguments) pairs."""

    def __init__(self, base: str, name: str) -> None:
        self.base, self.name = base, name
        self.instructions: list[tuple[str, str]] = []

    def last(self, instruction: str) -> str | None:
        """Arguments of the last ``instruction`` in this stage, if any."""
        found = [args for kind, args in self.instructions if kind == instruction]
        return found[-1] if found else None


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name, with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, args = line.partition(" ")
        kind, args = kind.upper(), args.strip()
        if kind == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, line
            base, name = match.groups()
            current = Stage(base, name or str(len(stages)))
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((kind, args))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built ``FROM``, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def copy_sources(args: str) -> list[str]:
    """Source paths of a ``COPY`` (exec or shell form), without the destination and flags."""
    if args.startswith("["):
        paths = json.loads(args)
    else:
        paths = [part for part in args.split() if not part.startswith("--")]
    return paths[:-1]


def local_copies() -> list[tuple[str, str]]:
    """(stage, source) for every ``COPY`` from the build context (not ``--from``)."""
    found = []
    for stage in parse_dockerfile().values():
        for kind, args in stage.instructions:
            if kind in ("COPY", "ADD") and "--from=" not in args:
                found += [(stage.name, source) for source in copy_sources(args)]
    return found


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` out of the build context (last match wins)."""
    ignore = ROOT / ".dockerignore"
    if not ignore.is_file():
        return False
    parents = [str(Path(*Path(path).parts[: i + 1])) for i in range(len(Path(path).parts))]
    excluded = False
    for pattern in ignore.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, pattern) for p in parents):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------- docker-compose.yml


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE)["services"]


def test_compose_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert {"api", "api-gpu", "train", "prometheus"} <= set(services)


def test_api_is_the_default_cpu_service(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert "profiles" not in api  # `docker compose up` starts it
    assert api["build"]["target"] == "cpu"
    assert {8000, 8081} <= set(container_ports(api))  # REST and gRPC
    assert any(re.fullmatch(r"(\$\{\w+:-8000\}|8000):8000", str(p)) for p in api["ports"])

    check = api["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert any(part.endswith("docker/healthcheck.py") for part in check["test"])
    assert "/healthz" in (ROOT / "docker" / "healthcheck.py").read_text()

    source, mode = volumes(api)["/models"]
    assert source == "./models" and mode == "ro"
    assert environment(api)["CATDOG_MODEL_DIR"].startswith("/models/")


def test_api_gpu_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    assert_nvidia_gpu(gpu)
    assert environment(gpu)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"  # a string, as compose wants
    assert volumes(gpu)["/models"][1] == "ro"
    assert gpu["healthcheck"] == services["api"]["healthcheck"]
    assert set(container_ports(gpu)) == {8000, 8081}
    assert gpu["ports"] != services["api"]["ports"]  # both can run side by side


def test_train_service_gets_gpus_data_and_models(services: dict[str, dict[str, Any]]) -> None:
    train = services["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["target"] == "train"
    assert_nvidia_gpu(train)
    mounts = volumes(train)
    assert mounts["/data"][0] == "./data"
    assert mounts["/models"] == ("./models", "rw")  # export writes new versions
    assert "/runs" in mounts


def test_prometheus_scrapes_the_api_metrics(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    source, mode = volumes(prometheus)["/etc/prometheus/prometheus.yml"]
    assert source == "./docker/prometheus.yml" and mode == "ro"
    config_path = ROOT / source
    assert config_path.is_file()

    config = load_yaml(config_path)
    jobs = config["scrape_configs"]
    api_jobs = []
    for job in jobs:
        targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        names = [n for sd in job.get("dns_sd_configs", []) for n in sd.get("names", [])]
        if "api" in names or "api:8000" in targets:
            api_jobs.append(job)
    assert api_jobs, "no scrape job reaches the api service"
    for job in api_jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("port") == 8000


# ---------------------------------------------------------------- docker/compose.replicas.yml


def test_replicas_overlay_puts_a_load_balancer_in_front() -> None:
    overlay = load_yaml(REPLICAS)["services"]
    ports = overlay["api"]["ports"]
    assert isinstance(ports, Reset) and ports.value == []  # replicas publish no port

    lb = overlay["lb"]
    assert {8000, 8081} <= set(container_ports(lb))
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    source, mode = next(iter(volumes(lb).values()))
    assert mode == "ro"
    nginx = (ROOT / source).read_text()
    assert re.search(r"server\s+api:8000\b", nginx)
    assert "listen 8000" in nginx
    assert re.search(r"server\s+api:8081\b", nginx) and "grpc_pass" in nginx


def test_compose_loader_is_still_safe() -> None:
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=ComposeLoader)


# ---------------------------------------------------------------- Dockerfile

FINAL_STAGES = ("cpu", "gpu", "train")


def _project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _packages(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[=<>~ ;]", line, maxsplit=1)[0].lower() for line in requirements}


def _installed_extras(stage: Stage) -> set[str]:
    """The extras of pyproject.toml a dependency stage's pip installs (``/tmp/catdog[a,b]``)."""
    runs = " ".join(args for kind, args in stage.instructions if kind == "RUN")
    found = re.findall(r"/tmp/catdog\[([a-z,-]+)\]", runs)
    assert found and "-c /tmp/catdog/requirements.lock" in runs, runs
    return {extra for group in found for extra in group.split(",")}


def test_dockerfile_has_cpu_and_gpu_targets() -> None:
    stages = parse_dockerfile()
    assert {"cpu", "gpu"} <= set(stages)
    project = _project()
    extras = project["optional-dependencies"]
    # the CPU image serves LiteRT: the serve extra, nothing of TensorFlow
    assert _installed_extras(stages["deps-cpu"]) == {"serve"}
    served = _packages(project["dependencies"] + extras["serve"])
    assert "ai-edge-litert" in served
    assert not served & {"tensorflow", "tensorflow-cpu", "keras", "matplotlib"}, served
    # the GPU image serves the SavedModel on TensorFlow with CUDA wheels
    assert _installed_extras(stages["deps-gpu"]) == {"gpu"}
    assert any("and-cuda" in line for line in extras["gpu"])
    # no second list of dependencies beside pyproject.toml
    assert not list((ROOT / "docker").glob("requirements*.txt"))


@pytest.mark.parametrize(("name", "runtime"), [("cpu", "litert"), ("gpu", "tensorflow")])
def test_each_image_names_its_runtime(name: str, runtime: str) -> None:
    envs = [args for kind, args in parse_dockerfile()[name].instructions if kind == "ENV"]
    assert any(f"CATDOG_RUNTIME={runtime}" in args for args in envs), envs


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_final_stages_run_as_a_non_root_user(name: str) -> None:
    stage = parse_dockerfile()[name]
    user = stage.last("USER")
    assert user, f"stage {name} sets no USER"
    assert user.split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_service_images_have_a_healthcheck(name: str) -> None:
    checks = [s.last("HEALTHCHECK") for s in lineage(parse_dockerfile(), name)]
    nearest = next(c for c in checks if c is not None)
    assert nearest != "NONE"
    assert "healthcheck.py" in nearest
    copied = [args for _, args in parse_dockerfile()[name].instructions]
    assert any("docker/healthcheck.py" in args for args in copied)


@pytest.mark.parametrize(("stage", "source"), local_copies())
def test_every_copied_file_exists(stage: str, source: str) -> None:
    path = ROOT / source
    if not path.exists() and source in OPTIONAL_SOURCES:
        pytest.skip(f"{source} (stage {stage}): {OPTIONAL_SOURCES[source]}")
    assert path.exists(), f"stage {stage} copies {source}, which is not in the repository"
    assert not dockerignored(source), f"stage {stage} copies {source}, but .dockerignore drops it"
