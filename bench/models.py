"""Untrained exports for speed benchmarks: the same graph as a trained model, no training run.

Throughput depends on the architecture and input size, not on the weights, so
``bench.serve`` can measure ``article-3`` on a fresh clone without its
30-minute training run. The export goes through the project's own
``training.export.export_model`` (SavedModel + metadata.json), and its metadata
says it is untrained, so nobody mistakes it for a classifier.

    .venv/bin/python -m bench.models article-3 --out bench/.cache/models/article-3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from bench.harness import CACHE

CACHE_MODELS = CACHE / "models"


def export_untrained(
    architecture: str, out: Path | None = None, image_size: int = 224, seed: int = 42
) -> Path:
    """``out/1`` holding ``architecture`` with its initial weights (reused if already there)."""
    out = out or CACHE_MODELS / architecture
    if (out / "1" / "saved_model.pb").exists():
        return out
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from training.export import export_model
    from training.models import make_model

    keras.utils.set_random_seed(seed)
    model = make_model(architecture, (image_size, image_size, 3), 2, weights=None)
    metadata = {"architecture": architecture, "untrained": True, "purpose": "speed benchmarks"}
    export_model(model, out, metadata=metadata, version=1)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m bench.models ARCH [--out DIR] [--image-size N]``."""
    p = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    p.add_argument("architecture", help="e.g. article-3, scratch, transfer")
    p.add_argument("--out", type=Path, help=f"model base folder (default {CACHE_MODELS}/ARCH)")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    print(export_untrained(args.architecture, args.out, args.image_size))


if __name__ == "__main__":
    main()
