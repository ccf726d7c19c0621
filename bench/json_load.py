"""Clients that send pixels as JSON numbers, under load: read by the fast path or by pydantic.
``bench protocols`` with TF Serving ``:predict`` of one photo's pixels as JSON numbers (~3 MB)
and, as a control, the file to ``/predict``, on two LiteRT servers: the fast path (the
default, ``app/protocols/numbers.py``) and pydantic; later arguments win.

    .venv/bin/python -m bench json_load --clients 1,8,32 --duration 10
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench import protocols

PRESET = ["--forms", "json-numbers,predict", "--clients", "1,8,32", "--n-images", "16"]
PRESET += ["--server", "fast:runtime=litert"]
PRESET += ["--server", "pydantic:runtime=litert,json_fast_tensors=false"]
PRESET += ["--out", "bench/results/json-load.md"]
PRESET += ["--title", "Pixels as JSON numbers under load: the fast path and pydantic"]


def main(argv: Sequence[str] | None = None) -> None:
    """``bench protocols`` with this preset, then ``argv``."""
    protocols.main([*PRESET, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
