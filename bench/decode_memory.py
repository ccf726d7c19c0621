"""Decoding memory: peak RSS of decoding one large PNG, in a fresh process per budget.

A small file can decode into a lot of memory. This writes a W×H RGBA PNG of noise
blocks (small on disk), then in a fresh subprocess decodes it with the project's
preprocessing (``catdog.preprocessing.preprocess``, the pixel budget's gate as the
service uses it) and reports the process's peak RSS above its baseline, in MB and
in bytes per pixel.

    .venv/bin/python -m bench.decode_memory --megapixels 50
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench import harness, sizing

CHILD = """
import json, resource, sys
from app.core.service import PixelBudget
from catdog.preprocessing import preprocess
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
budget = PixelBudget(10**9)
preprocess(data, (224, 224), max_pixels=10**9, gate=budget.hold)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kb": before, "peak_kb": after, "file_bytes": len(data)}))
"""


def write_png(path: Path, megapixels: float) -> tuple[int, int]:
    """A square-ish RGBA PNG of ``megapixels``, compressible (8×8 blocks of noise)."""
    side = int((megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (side // 8 + 1, side // 8 + 1, 4), dtype=np.uint8)
    pixels = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:side, :side]
    Image.fromarray(pixels, "RGBA").save(path, compress_level=9)
    return side, side


def main(argv: list[str] | None = None) -> None:
    """Measure and print one line per run."""
    p = harness.parser("decode_memory", __doc__, model=False)
    p.add_argument("--megapixels", type=float, default=50.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        width, height = write_png(Path(tmp) / "big.png", args.megapixels)
        child = [sys.executable, "-c", CHILD, str(Path(tmp) / "big.png")]
        result = json.loads(subprocess.run(child, capture_output=True, check=True).stdout)
    rise_mb = (result["peak_kb"] - result["baseline_kb"]) / 1024
    per_pixel = rise_mb * 1024 * 1024 / (width * height)
    print(
        f"{width}x{height} RGBA PNG, {result['file_bytes'] / 1e6:.1f} MB on disk: "
        f"peak RSS +{rise_mb:.0f} MB while decoding ({per_pixel:.1f} bytes per pixel)"
    )
    command = shlex.join(["python", "-m", "bench.decode_memory", *(argv or sys.argv[1:])])
    sizing.update("decode", sizing.decode_part(command, per_pixel))


if __name__ == "__main__":
    main()
