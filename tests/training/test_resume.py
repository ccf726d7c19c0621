"""Resumable training: ``last.keras`` + ``state.json`` + ``history.jsonl`` survive a crash.

* A CLI run killed (SIGKILL, no chance to clean up) after a few epochs picks up
  at the next epoch when the same command is run again, and its history ends
  with every epoch exactly once.
* A finished run invoked again trains no further.
* A two-phase ``transfer`` run records both phases and fine-tunes with the
  backbone unfrozen; a run started from its checkpoint can skip the head phase.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import keras
import pytest

from tests import images
from tests.images import MakeSplit
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4  # killed after two: the rerun has at least one epoch left
STEPS = 200  # ~1 s per epoch for article-1 at 32x32 on one CPU core: time to kill mid-run
TIMEOUT = 600

pytestmark = [  # noise from inside Keras 3.15 itself, not from the project
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


def train_command(split: Path, run: Path) -> list[str]:
    """The CLI invocation used for both the interrupted run and its resumption."""
    return [
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
        "8",
        "--steps-per-epoch",
        str(STEPS),
        "--strategy",
        "default",
    ]


def cli_env() -> dict[str, str]:
    """A single-process, CPU-only, unbuffered environment for the CLI."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    env.pop("TF_CONFIG", None)
    return env


def logged_epochs(run: Path) -> list[int]:
    """``global_epoch`` of every line of ``history.jsonl``, in file order."""
    path = run / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["global_epoch"] for line in path.read_text().splitlines() if line]


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_killed_run_resumes_at_the_next_epoch(make_split: MakeSplit, tmp_path: Path) -> None:
    split = make_split(per_split={"train": 4, "validation": 2, "test": 1})
    run = tmp_path / "run"
    command = train_command(split, run)

    # First attempt: kill it hard once two epochs are on record.
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=cli_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(logged_epochs(run)) < 2:
            if process.poll() is not None:
                pytest.fail(f"training exited ({process.returncode}) early:\n{tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no two epochs within {TIMEOUT} s:\n{tail(log)}")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "finished before it could be killed"

    done = logged_epochs(run)
    k = done[-1]
    assert done == list(range(1, k + 1))
    assert 2 <= k < EPOCHS
    # The log line is written before the model and the state, so a kill in between
    # leaves the state one epoch behind the log: that epoch is simply run again.
    state = json.loads((run / "state.json").read_text())
    assert state["phase"] == "train" and state["epoch"] in (k - 1, k)
    repeated = k - state["epoch"]  # 0, or 1 if that epoch's log line got ahead of the kill
    k = state["epoch"]
    assert (run / "last.keras").is_file()
    assert not (run / "history.json").exists()  # written only at the very end

    # Second attempt: the same command carries on from epoch k + 1.
    rerun = subprocess.run(
        command,
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resuming {run}: phase train, {k} epoch(s) done" in rerun.stdout
    started = [int(n) for n in re.findall(rf"Epoch (\d+)/{EPOCHS}\b", rerun.stdout)]
    assert started == list(range(k + 1, EPOCHS + 1))

    logged = logged_epochs(run)
    assert sorted(set(logged)) == list(range(1, EPOCHS + 1))
    assert len(logged) == EPOCHS + repeated  # only a re-run epoch appears twice
    history = json.loads((run / "history.json").read_text())
    assert history["phase"] == ["train"] * EPOCHS
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        assert len(history[key]) == EPOCHS, key
    state = {"phase": "train", "epoch": EPOCHS, "planned_epochs": EPOCHS}
    assert json.loads((run / "state.json").read_text()) == state
    result = json.loads((run / "result.json").read_text())
    assert result["epochs_run"] == EPOCHS
    assert (run / "final.keras").is_file()


def test_finished_run_does_not_train_again(
    make_split: MakeSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_split(per_split={"train": 4, "validation": 2, "test": 1})
    config = TrainConfig(
        data_dir=str(split),
        run_dir=str(tmp_path / "run"),
        architecture="article-1",
        epochs=2,
        batch_size=4,
        image_size=(32, 32),
        strategy="default",
        seed=0,
    )
    run = tmp_path / "run"
    first = train(config)
    assert re.findall(r"Epoch (\d+)/2\b", capsys.readouterr().out) == ["1", "2"]
    trained = keras.saving.load_model(run / "final.keras").get_weights()

    second = train(config)

    out = capsys.readouterr().out
    assert f"resuming {run}: phase train, 2 epoch(s) done" in out
    assert not re.search(r"Epoch \d+/2\b", out)  # model.fit did not run
    assert logged_epochs(run) == [1, 2]
    state = {"phase": "train", "epoch": 2, "planned_epochs": 2}
    assert json.loads((run / "state.json").read_text()) == state
    assert second["epochs_run"] == first["epochs_run"] == 2
    assert second["best_epoch"] == first["best_epoch"]
    assert second["val_accuracy"] == first["val_accuracy"]
    again = keras.saving.load_model(run / "final.keras").get_weights()
    assert len(again) == len(trained) > 0
    for a, b in zip(again, trained):
        assert (a == b).all()  # not one more step


class TransferRun(NamedTuple):
    """A finished two-phase ``transfer`` run: its folder, result and printed output."""

    run: Path
    result: dict[str, Any]
    out: str
    split: Path


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory: pytest.TempPathFactory) -> TransferRun:
    """One epoch with the backbone frozen, then one fine-tuning it (MobileNet, 32x32)."""
    folder = tmp_path_factory.mktemp("transfer")
    split = images.write_split(folder / "split", {"train": 4, "validation": 2, "test": 1})
    run = folder / "run"
    config = TrainConfig(
        data_dir=str(split),
        run_dir=str(run),
        architecture="transfer",
        backbone="mobilenet",
        weights=None,  # no download; the phases are what is tested
        image_size=(32, 32),
        epochs=1,
        fine_tune_epochs=1,
        batch_size=4,
        strategy="default",
        seed=0,
    )
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = train(config)
    return TransferRun(run, result, out.getvalue(), split)


def test_transfer_run_fine_tunes_the_unfrozen_backbone(transfer_run: TransferRun) -> None:
    run, result = transfer_run.run, transfer_run.result
    history = json.loads((run / "history.json").read_text())
    assert history["phase"] == ["head", "fine-tune"]
    assert result["epochs_run"] == 2
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"], r["global_epoch"]) for r in rows] == [
        ("head", 1, 1),
        ("fine-tune", 1, 2),
    ]
    state = {"phase": "fine-tune", "epoch": 1, "planned_epochs": 1}
    assert json.loads((run / "state.json").read_text()) == state

    # The head phase started with only the classifier trainable (the summary printed
    # before training); the fine-tune phase ended with the whole backbone trainable.
    model = keras.saving.load_model(run / "final.keras")
    head = model.layers[-1]
    assert isinstance(head, keras.layers.Dense)
    assert f"Trainable params: {head.count_params():,} " in transfer_run.out
    backbone = next(layer for layer in model.layers if layer.name.startswith("mobilenet"))
    assert backbone.trainable
    assert all(layer.trainable for layer in backbone.layers)
    assert len(backbone.trainable_weights) > 0
    assert sum(w.numpy().size for w in model.trainable_weights) > head.count_params()


def test_a_run_started_from_a_checkpoint_can_skip_the_head_phase(
    transfer_run: TransferRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--init-from`` with ``--epochs 0``: only fine-tuning, from the given weights."""
    config = TrainConfig(
        data_dir=str(transfer_run.split),
        run_dir=str(tmp_path / "second"),
        architecture="transfer",
        weights=None,
        image_size=(32, 32),
        batch_size=4,
        strategy="default",
        seed=0,
        epochs=0,
        fine_tune_epochs=1,
        backbone_size=48,
        init_from=str(transfer_run.run / "final.keras"),
    )

    result = train(config)

    assert f"weights from {config.init_from}" in capsys.readouterr().out
    history = json.loads((tmp_path / "second" / "history.json").read_text())
    assert history["phase"] == ["fine-tune"]
    assert result["epochs_run"] == 1
    model = keras.saving.load_model(tmp_path / "second" / "final.keras")
    assert model.get_layer("backbone_resize").output.shape == (None, 48, 48, 3)


def test_resuming_with_more_epochs_schedules_the_rest_anew(
    make_split: MakeSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_split(per_split={"train": 4, "validation": 2, "test": 1})
    config = TrainConfig(
        data_dir=str(split),
        run_dir=str(tmp_path / "run"),
        architecture="article-1",
        epochs=1,
        batch_size=4,
        image_size=(32, 32),
        strategy="default",
        lr_schedule="cosine",
        seed=0,
    )
    run = tmp_path / "run"
    train(config)
    config.epochs = 3
    result = train(config)

    out = capsys.readouterr().out
    assert "phase train: 3 epochs (was 1); new schedule from here" in out
    assert re.findall(r"Epoch (\d+)/3\b", out) == ["2", "3"]
    assert logged_epochs(run) == [1, 2, 3] and result["epochs_run"] == 3
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 3
    assert saved["replanned"] == {
        "phase": "train",
        "epochs_before": 1,
        "epochs_now": 3,
        "at_epoch": 1,
    }
    # A fresh optimizer: it counted only the steps since the resume (2 epochs x 2 steps).
    optimizer = keras.saving.load_model(run / "last.keras").optimizer
    assert int(optimizer.iterations) == 4
    assert json.loads((run / "state.json").read_text())["planned_epochs"] == 3

    # Changing the count again (even if config.json was rewritten in between) replans again.
    config.epochs = 4
    train(config)
    assert "phase train: 4 epochs (was 3); new schedule from here" in capsys.readouterr().out
    assert logged_epochs(run) == [1, 2, 3, 4]
    assert int(keras.saving.load_model(run / "last.keras").optimizer.iterations) == 2
