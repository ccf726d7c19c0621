"""``python -m batch`` as a user starts it: Ray embedded, then on a two-node cluster.

Each job runs as its own process on the tiny model, over a folder of good and bad
files, and its rows are compared with what the real service answers for the same
files. The embedded job (``python -m batch`` starts Ray inside itself and stops it at
the end) runs once for the module. The cluster job joins two nodes on this machine
(``ray start --head``, then ``ray start --address``, one CPU each:
``servicekit.ray_cluster``) through ``RAY_ADDRESS`` and must classify files on both.
Both are in this one module so that ``make test`` runs them on one worker, one after
the other: two Ray clusters started at once on one machine collide.

Ray is never started inside the pytest worker: by the time this module runs, the
worker holds gRPC and TensorFlow threads from other modules, and Ray forks its GCS
server with a Python ``preexec_fn``. A fork taken while another thread holds a lock
can leave that child hung before ``exec``; CI saw exactly that (no GCS log file, a
30 s timeout waiting for its port).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batch.__main__ import main
from servicekit import ROOT
from servicekit.ray_cluster import local_cluster
from tests.batch.photos import BAD, GOOD, service_answers, write_folder

TOLERANCE = 1e-5
JOB_TIMEOUT = 300  # seconds


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def job(folder: Path, tiny_model_base: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and rows of one embedded job (batches of 2: several per actor)."""
    out, summary_path = folder.parent / "rows.parquet", folder.parent / "summary.json"
    command = [sys.executable, "-m", "batch", str(folder), "--output", str(out)]
    command += ["--model", str(tiny_model_base), "--batch-size", "2", "--no-progress"]
    command += ["--summary-json", str(summary_path)]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(summary_path.read_text()), pq.read_table(out).to_pylist()


def test_one_row_per_file_with_errors_where_they_belong(
    job: tuple[dict[str, Any], list[dict[str, Any]]], folder: Path
) -> None:
    summary, rows = job
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == len(by_path) == len(GOOD) + len(BAD)
    assert set(by_path) == {str((folder / name).resolve()) for name in {**GOOD, **BAD}}
    for name in GOOD:
        row = by_path[str((folder / name).resolve())]
        assert row["error"] is None and row["label"] in ("cat", "dog"), row
        assert row["cat"] + row["dog"] == pytest.approx(1.0, abs=1e-12)
    for name in BAD:
        row = by_path[str((folder / name).resolve())]
        assert row["error"] and row["label"] is None and row["cat"] is None, row
    reasons = {name: by_path[str((folder / name).resolve())]["error"] for name in BAD}
    assert reasons["empty.png"] == "empty file"
    assert reasons["sub/notes.jpg"].startswith("not a recognised image format")
    assert "truncated" in reasons["truncated.jpg"]
    assert reasons["sub/huge.jpg"].endswith("exceeds the upload limit of 10485760 bytes")
    assert all(row["model_version"] == "1" for row in rows)
    assert summary["files"] == len(rows) and summary["errors"] == len(BAD)
    assert sum(summary["labels"].values()) == len(GOOD)
    assert summary["concurrency"] >= 1 and summary["ray"] == "embedded"


def test_rows_equal_the_services_answers(
    job: tuple[dict[str, Any], list[dict[str, Any]]], folder: Path, tiny_model_base: Path
) -> None:
    _, rows = job
    answers = service_answers(tiny_model_base, folder)
    assert set(answers) == {row["path"] for row in rows}
    for row in rows:
        answer = answers[row["path"]]
        if row["error"] is not None:
            assert "probabilities" not in answer
            if row["path"].endswith("empty.png"):  # /predict names the upload instead
                assert answer["detail"] == "image.jpg is empty"
            elif row["path"].endswith("huge.jpg"):  # /predict: 413 before reading it
                assert "10485760" in answer["detail"] and "10485760" in row["error"]
            else:
                assert row["error"] == answer["detail"], row["path"]
            continue
        assert row["label"] == answer["label"], row["path"]
        assert row["model_version"] == answer["model_version"]
        assert row["known"] == answer.get("known") and row["ood_score"] == answer.get("ood_score")
        for name, probability in answer["probabilities"].items():
            assert row[name] == pytest.approx(probability, abs=TOLERANCE), (row["path"], name)


def test_usage_errors_exit_2_before_ray_starts(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(folder), "--output", str(tmp_path / "rows.txt")]) == 2
    assert "must end in .parquet, .csv, .jsonl" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--output", str(tmp_path / "r.csv")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_job_runs_on_both_nodes_of_a_cluster(
    folder: Path, tmp_path: Path, tiny_model_base: Path
) -> None:
    out, summary_path = tmp_path / "rows.jsonl", tmp_path / "summary.json"
    command = [sys.executable, "-m", "batch", str(folder), "--output", str(out)]
    command += ["--model", str(tiny_model_base), "--batch-size", "1", "--no-progress"]
    command += ["--summary-json", str(summary_path)]
    with local_cluster(nodes=2, cpus=1) as cluster:
        result = subprocess.run(
            command, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT
        )
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads(summary_path.read_text())
    assert summary["ray"] == f"cluster at {cluster.address}"
    assert summary["concurrency"] == 2
    assert len(summary["files_by_node"]) == 2, summary  # both nodes classified files
    assert sum(summary["files_by_node"].values()) == len(GOOD) + len(BAD)
    assert "files by Ray node: " in result.stdout

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    answers = service_answers(tiny_model_base, folder)
    assert sorted(row["path"] for row in rows) == sorted(answers)
    for row in rows:
        answer = answers[row["path"]]
        if "probabilities" not in answer:
            assert row["error"] and row["label"] is None, row
            continue
        assert row["error"] is None and row["label"] == answer["label"], row
        for name, probability in answer["probabilities"].items():
            assert row[name] == pytest.approx(probability, abs=TOLERANCE), (row["path"], name)
