"""``CATDOG_REQUIRE_GPU``: a real server process refuses to start without a usable GPU.

GPU pods set it (deploy/k8s/components/gpu) so a pod that holds a GPU it cannot
use exits at start instead of going Ready on the CPU. No GPU is visible where the
tests run, so both runtimes must refuse: TensorFlow because it lists no GPU,
LiteRT because it runs on the CPU only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from catdog.runtimes import gpu_problem
from servicekit import start_uvicorn, stop
from tests.app.helpers import STARTUP_TIMEOUT

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "catdog"


@pytest.mark.parametrize(
    ("runtime", "reason"),
    [("tensorflow", "TensorFlow sees no GPU"), ("litert", "runs on the CPU only")],
)
def test_server_exits_at_start_without_a_gpu(tmp_path: Path, runtime: str, reason: str) -> None:
    if runtime == "tensorflow" and gpu_problem("tensorflow") is None:
        pytest.skip("a GPU is visible here: the refusal cannot be staged")
    server = start_uvicorn(
        SHIPPED, tmp_path / "server.log", runtime=runtime, require_gpu="true", poll_interval_s=0
    )
    try:
        returncode = server.process.wait(STARTUP_TIMEOUT)
    finally:
        stop(server)
    log = server.log()
    assert returncode != 0, log
    assert "cannot start" in log and "CATDOG_REQUIRE_GPU" in log and reason in log, log
