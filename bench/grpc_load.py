"""The gRPC APIs (Open Inference Protocol, TF Serving) beside REST, in one server. It is
``bench protocols`` with gRPC ``ModelInfer``, TF Serving's ``Predict``, REST OIP binary and
``/predict``, batches of 8 and 32 photos and pixels, and every answer against gRPC's; later
arguments win.

    .venv/bin/python -m bench grpc_load --clients 1,8,32 --duration 10
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench import protocols

PRESET = ["--forms", "grpc,tfs-grpc,oip-binary,predict", "--clients", "1,8,32", "--n-images", "44"]
PRESET += ["--batch-sizes", "8,32", "--out", "bench/results/grpc-load.md"]
PRESET += ["--title", "gRPC (Open Inference Protocol, TF Serving) beside REST"]


def main(argv: Sequence[str] | None = None) -> None:
    """``bench protocols`` with this preset, then ``argv``."""
    protocols.main([*PRESET, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
