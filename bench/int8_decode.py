"""``python -m bench.int8_decode``: decode + resize per photo, the served Pillow path
against simplejpeg (libjpeg-turbo with DCT scaling).

Issue 28 asks for a faster JPEG decoder if decoding is >= 25 % of a request's CPU.
For each photo set (the 480x320 photos ``bench serve`` sends, made by
``bench.serve_images``; the test split's originals; its 12MP versions) it times, on
one thread, in CPU time, best of ``--passes`` interleaved passes:

* ``catdog.preprocessing.load_image``: what the service and training run (Pillow,
  with ``Image.draft`` picking a 1/2, 1/4 or 1/8 DCT scale that keeps both sides
  >= 224);
* simplejpeg at full scale, then the same Pillow resize;
* simplejpeg's DCT scaling (``min_width``/``min_height`` = 224: the smallest M/8 scale
  that keeps both sides >= 224), then the same resize;
* Pillow's ``draft`` at 1/2 whatever the target (below 224 for 480x320), then the resize;
* the decode alone, by Pillow and by simplejpeg (full and DCT-scaled).

Beside each time: how far the 224x224 pixels are from the served ones (mean and
largest absolute difference, 0-255). simplejpeg is not a dependency of the
project: install it to run this (``pip install simplejpeg``).

    .venv/bin/python -m bench.int8_decode --out bench/results/int8-decode.md
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.harness import markdown, new_report, table, write_report
from catdog.contract import IMAGE_SIZE
from catdog.preprocessing import load_image

SIZE = IMAGE_SIZE[::-1]  # (width, height) for Pillow
SIDE = max(IMAGE_SIZE)


def paths(args: argparse.Namespace) -> dict[str, list[bytes]]:
    """The photo sets: files as bytes."""
    cache = Path("bench/.cache/images")
    sets = {
        "480x320 (the bench serve load)": sorted((cache / "480x320").glob("*.jpg")),
        "test split originals": sorted(Path(args.images).glob("*/*.jpg"))[: args.originals],
        "12MP": sorted((cache / "12MP").glob("*.jpg")),
    }
    return {name: [p.read_bytes() for p in files] for name, files in sets.items() if files}


def ways() -> dict[str, Callable[[bytes], Any]]:
    """Each path, by name: bytes in, 224x224 RGB uint8 (or a decoded image) out."""
    import simplejpeg

    bilinear = Image.Resampling.BILINEAR

    def simple(data: bytes, side: int = 0) -> np.ndarray:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side)
        return np.asarray(Image.fromarray(pixels).resize(SIZE, bilinear))

    def half(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (image.width // 2, image.height // 2))
            return np.asarray(image.convert("RGB").resize(SIZE, bilinear))

    def pillow_decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    return {
        "served: load_image (Pillow, draft keeps >= 224)": load_image,
        "simplejpeg full scale + resize": simple,
        "simplejpeg DCT-scaled (>= 224) + resize": lambda data: simple(data, SIDE),
        "Pillow draft 1/2 (may go below 224) + resize": half,
        "decode alone: Pillow": pillow_decode,
        "decode alone: simplejpeg full scale": lambda d: simplejpeg.decode_jpeg(d, "RGB"),
        "decode alone: simplejpeg DCT-scaled (>= 224)": lambda d: simplejpeg.decode_jpeg(
            d, "RGB", min_height=SIDE, min_width=SIDE
        ),
    }


def other_cpu() -> tuple[float, float]:
    """(all CPU seconds busy on the machine, this process's CPU seconds) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / ticks, time.process_time()


def measure(files: Sequence[bytes], passes: int) -> list[dict[str, Any]]:
    """Best-of-``passes`` CPU ms per photo of each path, and its pixel difference."""
    served = [load_image(data) for data in files]
    best = dict.fromkeys(ways(), float("inf"))
    for _ in range(passes):
        for name, way in ways().items():
            start = time.thread_time()
            for data in files:
                way(data)
            best[name] = min(best[name], (time.thread_time() - start) / len(files) * 1e3)
    rows = []
    for name, way in ways().items():
        row: dict[str, Any] = {"path": name, "ms": round(best[name], 3)}
        if not name.startswith("decode alone"):
            diffs = [np.abs(way(d).astype(np.int16) - s) for d, s in zip(files, served)]
            row["mean_diff"] = round(float(np.mean([d.mean() for d in diffs])), 3)
            row["max_diff"] = max(int(d.max()) for d in diffs)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Time every path on every photo set and write the report."""
    p = argparse.ArgumentParser(prog="python -m bench.int8_decode", description=__doc__[:80])
    p.add_argument("--images", default="runs/int8/split/test", help="a test split folder")
    p.add_argument("--originals", type=int, default=500, help="originals timed")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/int8-decode.md"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    import simplejpeg

    report = new_report("bench.int8_decode", argv, simplejpeg=simplejpeg.__version__)
    busy, own = other_cpu()
    wall = time.perf_counter()
    body: list[str] = []
    report["sets"] = {}
    for name, files in paths(args).items():
        rows = measure(files, args.passes if len(files) > 10 else 2)
        size = np.mean([len(f) for f in files]) / 1e3
        report["sets"][name] = rows
        body += [f"## {name}: {len(files)} photos, {size:.1f} KB mean", ""]
        columns = [("path", "path"), ("CPU ms per photo", "ms")]
        columns += [("mean abs diff vs served", "mean_diff"), ("max abs diff", "max_diff")]
        body += [*table(rows, columns, text=["path"]), ""]
    busy_end, own_end = other_cpu()
    seconds = time.perf_counter() - wall
    report["other_cpu_cores"] = round((busy_end - busy - (own_end - own)) / seconds, 2)
    about = (
        f"One thread, CPU time, best of {args.passes} interleaved passes; simplejpeg "
        f"{simplejpeg.__version__}; the rest of the machine used "
        f"{report['other_cpu_cores']} cores meanwhile. See `bench/int8_decode.py`."
    )
    title = "# JPEG decoding: Pillow against simplejpeg"
    write_report(report, markdown(title[2:], report, about, body), args.out)


if __name__ == "__main__":
    main()
