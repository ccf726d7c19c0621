"""What each epoch of a run leaves behind: its wall time in the logs, and the files
that make the run resumable (``last.keras``, ``state.json``, ``history.jsonl``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import keras


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of each epoch, validation included) to the logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class EpochState(keras.callbacks.Callback):
    """After every epoch: save the full model (optimizer included) and log the epoch.

    ``last.keras`` + ``state.json`` make a run resumable; ``history.jsonl`` keeps
    one line per finished epoch across interruptions.
    """

    def __init__(self, out: Path, phase: str, epoch_offset: int = 0, planned: int = 0) -> None:
        super().__init__()
        self.out, self.phase, self.epoch_offset = out, phase, epoch_offset
        self.planned = planned  # the epoch count the optimizer's schedule was made for

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Log first, then the model, then the state: a kill between any two steps
        # at worst repeats this epoch on resume (and its log line is replaced).
        row = {
            "phase": self.phase,
            "epoch": epoch + 1,
            "global_epoch": self.epoch_offset + epoch + 1,
            **{k: float(v) for k, v in (logs or {}).items()},
        }
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        staging = self.out / "last.tmp.keras"
        self.model.save(staging)
        staging.replace(self.out / "last.keras")
        state = self.out / "state.tmp.json"
        record = {"phase": self.phase, "epoch": epoch + 1, "planned_epochs": self.planned}
        state.write_text(json.dumps(record) + "\n")
        state.replace(self.out / "state.json")


def read_history(out: Path) -> list[dict[str, Any]]:
    """Finished epochs in order, the last record winning if an epoch was logged twice."""
    path = out / "history.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["global_epoch"]] = row
    return [rows[k] for k in sorted(rows)]
