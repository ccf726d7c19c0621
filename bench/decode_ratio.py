"""Pixels per byte: what real files claim, and what the PNG row check costs.

The service refuses a file that claims more than ``CATDOG_MAX_PIXELS_PER_BYTE``
pixels per byte of file (above a megapixel). This prints the ratio for photos (the
Kaggle JPEGs under ``--photos``, when given), PNG screenshots and drawings, blank
pictures in every accepted format, and the crafted files that motivated the bound;
then the time ``catdog.preprocessing`` spends checking that a PNG's data fills its
rows, against the whole preprocessing of the same file.

    .venv/bin/python -m bench.decode_ratio --photos data/raw/train
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bench import harness
from bench.harness import markdown, new_report, table, write_report
from catdog import preprocessing
from tests.catdog import crafted


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """``image`` saved as ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def screenshot(size: tuple[int, int] = (1920, 1080)) -> Image.Image:
    """Lines of dark text on a light page under a coloured bar, like a screenshot."""
    page = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(page)
    for y in range(70, size[1], 24):
        draw.text((20, y), "The quick brown fox jumps over the lazy dog. " * 4, fill=(30, 30, 30))
    draw.rectangle((0, 0, size[0], 60), fill=(40, 90, 200))
    return page


def files(photos: Path | None) -> list[tuple[str, bytes]]:
    """(what, file bytes) for every row of the table."""
    rows = [("text screenshot 1920x1080 PNG", encoded(screenshot(), "PNG"))]
    rows.append(("text screenshot 1920x1080 WebP", encoded(screenshot(), "WEBP")))
    drawing = Path("tests/fixtures/drawing-of-a-car.png")
    if drawing.exists():
        rows.append(("drawing (tests/fixtures) PNG", drawing.read_bytes()))
    for size in ((1920, 1080), (4000, 3000)):
        blank = Image.new("RGB", size, "white")
        name = f"blank {size[0]}x{size[1]}"
        rows += [(f"{name} {fmt}", encoded(blank, fmt)) for fmt in ("JPEG", "PNG", "GIF")]
        rows.append((f"{name} 1-bit PNG", encoded(blank.convert("1"), "PNG")))
        rows.append((f"{name} lossless WebP", encoded(blank, "WEBP", lossless=True)))
    rows.append(("crafted: PNG header claiming 7000x7000", crafted.png_header_only(7000, 7000)))
    return rows


def ratio(data: bytes) -> float:
    """Pixels claimed per byte of file."""
    with Image.open(io.BytesIO(data)) as image:
        return image.width * image.height / len(data)


def photo_ratios(folder: Path, limit: int) -> dict[str, Any]:
    """Median and largest ratio over the first ``limit`` JPEGs of ``folder``."""
    values = [ratio(p.read_bytes()) for p in sorted(folder.glob("*.jpg"))[:limit]]
    return {
        "what": f"{len(values)} Kaggle photos: median / largest",
        "bytes": None,
        "ratio": f"{np.median(values):.1f} / {max(values):.1f}",
    }


def row_check_ms(data: bytes, rounds: int = 10) -> tuple[float, float]:
    """Median ms of the PNG row check, and of the whole preprocessing, on ``data``."""
    check, whole = [], []
    for _ in range(rounds):
        with Image.open(io.BytesIO(data)) as image:
            started = time.perf_counter()
            preprocessing._check_png_rows(image, data)
            check.append(time.perf_counter() - started)
        started = time.perf_counter()
        preprocessing.preprocess(data, max_pixels_per_byte=None)
        whole.append(time.perf_counter() - started)
    return float(np.median(check)) * 1e3, float(np.median(whole)) * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print, write the report."""
    parser = harness.parser("decode_ratio", __doc__, "decode-ratio.md", model=False)
    parser.add_argument("--photos", type=Path, help="a folder of JPEG photos")
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args(argv)
    report = new_report("bench.decode_ratio", sys.argv[1:] if argv is None else argv)
    bound = preprocessing.DEFAULT_MAX_PIXELS_PER_BYTE
    rows = [{"what": w, "bytes": len(d), "ratio": round(ratio(d), 1)} for w, d in files(None)]
    if args.photos:
        rows.insert(0, photo_ratios(args.photos, args.limit))
    for row in rows:
        if isinstance(row["ratio"], float):
            row["passes"] = "yes" if row["ratio"] <= bound else "refused above 1 MP"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), np.uint8))
    checks = []
    for what, image in (("text screenshot", screenshot()), ("noise photo", noise)):
        data = encoded(image, "PNG")
        check, whole = row_check_ms(data)
        checks.append({"png": f"{what} 1920x1080", "bytes": len(data), "check_ms": round(check, 1)})
        checks[-1] |= {"preprocess_ms": round(whole, 1), "share": f"{check / whole:.0%}"}
    report["rows"], report["row_checks"] = rows, checks
    columns = [("file", "what"), ("bytes", "bytes"), ("pixels per byte", "ratio")]
    columns += [(f"passes the default bound ({bound})", "passes")]
    body = table(rows, columns, text=("what", "passes"))
    body += ["", "The PNG row check (inflate and count, before decoding), one thread:", ""]
    columns = [("PNG", "png"), ("bytes", "bytes"), ("check ms", "check_ms")]
    columns += [("preprocess ms (without the check)", "preprocess_ms")]
    body += table(checks, [*columns, ("check / preprocess", "share")], text=("png",))
    about = f"{report['started']}; {report['environment']['cpus']} CPUs."
    write_report(report, markdown("Pixels per byte", report, about, body), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
