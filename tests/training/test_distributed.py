"""Multi-worker training: two CPU workers of ``MultiWorkerMirroredStrategy`` on localhost.

Each worker is a real ``python -m training train --strategy multiworker`` process
with its own ``TF_CONFIG``; both write into the same ``--run`` folder, the chief
(worker 0) at its top and worker 1 under ``.worker-1/``. Each worker trains on
its own shard of the data, so identical final weights prove the gradients were
all-reduced across the two processes at every step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.images import MakeSplit

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
BATCH = 4  # per replica
EPOCHS = 2
STEPS = 2
TIMEOUT = 600  # seconds for the whole cluster; the first collective can be slow to set up


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on localhost a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(ports: list[int], index: int) -> dict[str, str]:
    """Environment of worker ``index``: its ``TF_CONFIG``, CPU only, quiet TensorFlow logs."""
    tf_config = {
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }
    return {
        **os.environ,
        "TF_CONFIG": json.dumps(tf_config),
        "CUDA_VISIBLE_DEVICES": "-1",  # two CPU workers, even on a machine with GPUs
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }


def run_cluster(split: Path, run: Path, logs: Path) -> list[int]:
    """Start every worker, wait for all of them, return their exit codes.

    Output goes to ``logs/worker-<i>.{out,err}``. On a timeout every worker is
    killed and the test fails with the tails of their stderr.
    """
    ports = free_ports(WORKERS)
    command = [
        sys.executable,
        "-m",
        "training",
        "train",
        "--data",
        str(split),
        "--run",
        str(run),
        "--arch",
        "article-1",
        "--epochs",
        str(EPOCHS),
        "--image-size",
        "32",
        "--batch-size",
        str(BATCH),
        "--steps-per-epoch",
        str(STEPS),
        "--strategy",
        "multiworker",
    ]
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(WORKERS):
        with (
            open(logs / f"worker-{index}.out", "w") as out,
            open(logs / f"worker-{index}.err", "w") as err,
        ):
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=worker_env(ports, index), stdout=out, stderr=err
                )
            )
    try:
        return [p.wait(timeout=TIMEOUT) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
            p.wait()
        pytest.fail(f"the cluster did not finish within {TIMEOUT} s\n{worker_logs(logs)}")


def worker_logs(logs: Path, tail: int = 40) -> str:
    """The last ``tail`` lines of every worker's stderr and stdout, for failure messages."""
    parts = []
    for index in range(WORKERS):
        for stream in ("err", "out"):
            lines = (logs / f"worker-{index}.{stream}").read_text(errors="replace").splitlines()
            parts.append(f"--- worker {index} std{stream} ---\n" + "\n".join(lines[-tail:]))
    return "\n".join(parts)


def test_two_workers_train_in_lockstep(make_split: MakeSplit, tmp_path: Path) -> None:
    split = make_split(per_split={"train": 8, "validation": 2, "test": 1})
    run, logs = tmp_path / "run", tmp_path / "logs"

    codes = run_cluster(split, run, logs)

    assert codes == [0] * WORKERS, f"exit codes {codes}\n{worker_logs(logs)}"
    chief, other = run, run / ".worker-1"
    for out in (chief, other):
        for name in ("final.keras", "last.keras", "config.json", "history.jsonl", "result.json"):
            assert (out / name).is_file(), out / name
    assert (chief / "history.png").is_file()
    assert not (other / "history.png").exists()  # only the chief plots
    assert json.loads((chief / "result.json").read_text())["chief"] is True
    assert json.loads((other / "result.json").read_text())["chief"] is False

    for out in (chief, other):
        config = json.loads((out / "config.json").read_text())
        assert config["strategy"] == "multiworker"
        assert config["replicas"] == WORKERS
        assert config["batch_size"] == BATCH
        assert config["global_batch_size"] == WORKERS * BATCH
        lines = (out / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["global_epoch"] for line in lines] == [1, 2]

    # Synchronous data parallelism: the same weights on both workers, to the last bit.
    weights = [keras.saving.load_model(out / "final.keras").get_weights() for out in (chief, other)]
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
