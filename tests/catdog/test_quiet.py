"""Starting TensorFlow on a CPU-only machine prints no GPU noise, but real errors still show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from catdog.quiet import has_nvidia_device, is_expected_noise

ROOT = Path(__file__).resolve().parents[2]
START = """
import sys
from catdog.quiet import drop_expected_gpu_noise
drop_expected_gpu_noise()
import tensorflow as tf
tf.constant(1.0) + 1.0  # initialises the devices: where cuInit is tried
print("a real error line", file=sys.stderr, flush=True)
"""


def test_the_filter_knows_the_cpu_only_lines() -> None:
    assert is_expected_noise(
        b"E0000 00:00:1796127063.755786 10243 cuda_platform.cc:52] failed call to cuInit: "
        b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
    )
    assert not is_expected_noise(b"E0000 ... some_op.cc:12] Invalid argument: shape mismatch")


@pytest.mark.skipif(has_nvidia_device(), reason="with a GPU the lines are kept on purpose")
def test_tensorflow_starts_without_gpu_noise() -> None:
    done = subprocess.run(
        [sys.executable, "-c", START], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "cuInit" not in done.stderr and "cuda drivers" not in done.stderr
    assert "a real error line" in done.stderr
