"""The TFJob runs the training CLI as chief + workers with the multi-worker strategy.

The command line is checked against the CLI's own definitions (read from
``training/__main__.py`` and ``training/train.py`` without importing TensorFlow);
the data and run folders must be on the shared volumes, read-only where only read.
"""

from __future__ import annotations

from tests.deploy import app_facts, crds, k8s
from tests.deploy.conftest import flavor


def _tfjob(overlay: str) -> k8s.Doc:
    return k8s.one(k8s.render(overlay), "TFJob")


def _trainer(replica: k8s.Doc) -> k8s.Doc:
    [container] = [
        c for c in replica["template"]["spec"]["containers"] if c["name"] == crds.TFJOB_CONTAINER
    ]
    return container


def _options(args: list[str]) -> dict[str, str]:
    """``--name=value`` / ``--name value`` pairs of a command line."""
    options, i = {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            options[key] = value
        elif arg.startswith("--"):
            options[arg] = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        i += 1
    return options


def test_chief_and_workers(training: str) -> None:
    replicas = _tfjob(training)["spec"]["tfReplicaSpecs"]
    assert replicas["Chief"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] >= 1
    assert set(replicas) == {"Chief", "Worker"}, "no parameter servers with multiworker"


def test_replicas_run_the_same_multiworker_training(training: str) -> None:
    assert app_facts.training_reads_tf_config(), "the training code no longer reads TF_CONFIG"
    commands = []
    for replica in _tfjob(training)["spec"]["tfReplicaSpecs"].values():
        container = _trainer(replica)
        args = container["args"]
        assert args[0] in app_facts.train_commands()
        options = _options(args[1:])
        assert set(options) <= app_facts.train_options(), set(options) - app_facts.train_options()
        assert options["--strategy"] in app_facts.training_strategies()
        assert options["--strategy"] == "multiworker"
        commands.append((container["image"], args))
    assert len(set(map(str, commands))) == 1, "chief and workers must run the same command"


def test_data_is_read_only_and_runs_are_shared(training: str) -> None:
    for replica in _tfjob(training)["spec"]["tfReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        container = _trainer(replica)
        options = _options(container["args"][1:])
        volumes = {v["name"]: v for v in pod["volumes"]}
        data = k8s.mount_for(container, options["--data"])
        run = k8s.mount_for(container, options["--run"])
        assert data and data.get("readOnly") is True
        assert run and not run.get("readOnly")
        for mount in (data, run):
            assert "persistentVolumeClaim" in volumes[mount["name"]], mount["name"]


def test_shared_volumes_can_be_mounted_by_every_replica(training: str) -> None:
    for claim in k8s.find(k8s.render(training), "PersistentVolumeClaim"):
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], claim["metadata"]["name"]


def test_restarts_resume_rather_than_start_over(training: str) -> None:
    job = _tfjob(training)
    for replica in job["spec"]["tfReplicaSpecs"].values():
        assert replica["restartPolicy"] in ("OnFailure", "ExitCode")
    assert job["spec"]["runPolicy"]["backoffLimit"] >= 1


def test_gpu_training_takes_a_gpu_per_replica(training: str) -> None:
    for replica in _tfjob(training)["spec"]["tfReplicaSpecs"].values():
        limits = _trainer(replica)["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == (flavor(training) == "gpu")
