"""``python -m batch`` joining a two-node Ray cluster through ``RAY_ADDRESS``.

Both nodes run on this machine (``ray start --head``, then ``ray start --address``,
one CPU each: ``servicekit.ray_cluster``); the job runs as a separate process, as a
user would start it, and must give the same rows as the service, with files
classified on both nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servicekit import ROOT
from servicekit.ray_cluster import local_cluster
from tests.batch.photos import BAD, GOOD, service_answers, write_folder

JOB_TIMEOUT = 300


def test_the_job_runs_on_both_nodes_of_a_cluster(tmp_path: Path, tiny_model_base: Path) -> None:
    folder = write_folder(tmp_path / "photos")
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
            assert row[name] == pytest.approx(probability, abs=1e-5), (row["path"], name)
