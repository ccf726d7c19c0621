"""Images that are certainly neither a cat nor a dog, and how many the OOD score catches.

Sources, each its own category:

* ``drawings``, ``textures``, ``scenes``: made here with Pillow and numpy from
  a seed (flat-colour line art; noise, stripes, checks and gradients; skies
  with ground, sun, houses, trees and cars);
* ``package samples``: the sample images matplotlib installs (a portrait, a
  photo of an object, a logo) and its sample data arrays drawn with a colour map;
* any extra folders of images given (e.g. the data images a scientific
  package ships), one category per folder.

``check`` runs a model with an OOD score over them and over real cat/dog
photos: the share of each category caught (score above the threshold) and the
share of cat/dog photos wrongly flagged.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from catdog.preprocessing import ImageError, preprocess
from training.data import IMAGE_EXTENSIONS, list_images
from training.export import load_outputs

Size = tuple[int, int]  # (width, height)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def drawing(rng: np.random.Generator, size: Size = (240, 200)) -> Image.Image:
    """Flat-colour line art: outlined and filled shapes on a light background."""
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(int(rng.integers(4, 12))):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        kind = rng.integers(0, 4)
        width = int(rng.integers(1, 6))
        fill = _colour(rng) if rng.random() < 0.5 else None
        if kind == 0:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), outline=_colour(rng), fill=fill, width=width)
        elif kind == 1:
            draw.rectangle((x0, y0, x1 + 1, y1 + 1), outline=_colour(rng), fill=fill, width=width)
        elif kind == 2:
            points = [tuple(int(v) for v in p) for p in rng.integers(0, (w, h), (5, 2))]
            draw.line(points, fill=_colour(rng), width=width, joint="curve")
        else:
            points = [tuple(int(v) for v in p) for p in rng.integers(0, (w, h), (3, 2))]
            draw.polygon(points, outline=_colour(rng), fill=fill)
    return image


def texture(rng: np.random.Generator, size: Size = (200, 200)) -> Image.Image:
    """Smooth coloured noise, stripes, a checkerboard, dots or a gradient."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 5)
    if kind == 0:  # value noise over a few octaves
        field = np.zeros((h, w, 3), np.float32)
        for octave in (4, 8, 16, 32):
            coarse = rng.random((octave, octave, 3)).astype(np.float32)
            layer = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
                size, Image.Resampling.BICUBIC
            )
            field += np.asarray(layer, np.float32) / octave
        field = (field - field.min()) / (np.ptp(field) + 1e-6)
        return Image.fromarray((field * 255).astype(np.uint8))
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    if kind == 1:  # stripes at an angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        t = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0)[..., None]
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(8, 50))
        t = (((x // cell) + (y // cell)) % 2 == 0)[..., None]
    elif kind == 3:  # dots
        cell = rng.uniform(10, 40)
        t = (
            (np.mod(x, cell) - cell / 2) ** 2 + (np.mod(y, cell) - cell / 2) ** 2 < (cell / 3) ** 2
        )[..., None]
    else:  # gradient
        t = ((x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) / (w + h) + 0.5)[..., None]
    pixels = a * t + b * (1 - t)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def scene(rng: np.random.Generator, size: Size = (320, 240)) -> Image.Image:
    """A sky over ground with a sun and some houses, trees and cars."""
    w, h = size
    horizon = int(rng.uniform(0.45, 0.75) * h)
    sky_top, sky_low = np.array(_colour(rng)) // 2 + 100, np.array((200, 220, 255))
    rows = np.linspace(0, 1, horizon)[:, None]
    sky = (sky_top * (1 - rows) + sky_low * rows).astype(np.uint8)
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:horizon] = sky[:, None, :]
    pixels[horizon:] = np.array(_colour(rng)) // 2 + np.array((20, 60, 10))
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    sx, sy, r = rng.uniform(0, w), rng.uniform(0, horizon / 2), rng.uniform(8, 25)
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 230, 120))
    for _ in range(int(rng.integers(2, 7))):
        x0 = float(rng.uniform(0, w - 20))
        base = float(rng.uniform(horizon, h))
        kind = rng.integers(0, 3)
        if kind == 0:  # house
            bw, bh = rng.uniform(30, 80), rng.uniform(25, 60)
            draw.rectangle((x0, base - bh, x0 + bw, base), fill=_colour(rng))
            draw.polygon(
                [(x0 - 5, base - bh), (x0 + bw + 5, base - bh), (x0 + bw / 2, base - bh - 25)],
                fill=_colour(rng),
            )
            draw.rectangle((x0 + bw / 3, base - bh / 2, x0 + bw / 2, base), fill=(60, 40, 30))
        elif kind == 1:  # tree
            th = rng.uniform(20, 50)
            draw.rectangle((x0, base - th, x0 + 6, base), fill=(90, 60, 30))
            cr = rng.uniform(12, 28)
            draw.ellipse(
                (x0 + 3 - cr, base - th - cr, x0 + 3 + cr, base - th + cr),
                fill=(30, 110 + int(rng.integers(0, 60)), 40),
            )
        else:  # car
            cw = rng.uniform(40, 80)
            draw.rounded_rectangle((x0, base - 18, x0 + cw, base - 4), 5, fill=_colour(rng))
            draw.rectangle(
                (x0 + cw * 0.25, base - 28, x0 + cw * 0.7, base - 18), fill=(150, 190, 220)
            )
            for wx in (x0 + cw * 0.2, x0 + cw * 0.8):
                draw.ellipse((wx - 6, base - 10, wx + 6, base + 2), fill=(20, 20, 20))
    return image.filter(ImageFilter.GaussianBlur(0.6))


def synthetic(count: int = 100, seed: int = 0) -> dict[str, list[bytes]]:
    """``count`` drawings, textures and scenes each, as JPEG bytes."""
    rng = np.random.default_rng(seed)
    return {
        name: [_encode(make(rng)) for _ in range(count)]
        for name, make in (("drawings", drawing), ("textures", texture), ("scenes", scene))
    }


def _colour_mapped(values: np.ndarray) -> bytes:
    """A 2-D array drawn with matplotlib's default colour map."""
    import matplotlib

    values = np.asarray(values, np.float64)
    scaled = (values - np.nanmin(values)) / (np.nanmax(values) - np.nanmin(values) + 1e-12)
    rgba = matplotlib.colormaps["viridis"](np.nan_to_num(scaled))
    return _encode(Image.fromarray((rgba[..., :3] * 255).astype(np.uint8)))


def package_samples() -> list[bytes]:
    """matplotlib's sample images, and its sample data arrays drawn as pictures."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    found = [
        p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    for name in ("topobathy.npz", "jacksboro_fault_dem.npz"):
        if (folder / name).is_file():
            with np.load(folder / name) as arrays:
                for key in arrays.files:
                    if arrays[key].ndim == 2 and min(arrays[key].shape) >= 32:
                        found.append(_colour_mapped(arrays[key]))
    if (folder / "s1045.ima.gz").is_file():  # a 256x256 16-bit MRI slice
        raw = np.frombuffer(gzip.decompress((folder / "s1045.ima.gz").read_bytes()), np.uint16)
        if raw.size == 256 * 256:
            found.append(_colour_mapped(raw.reshape(256, 256)))
    return found


def folder_images(folder: str | Path) -> list[bytes]:
    """The bytes of every image file directly inside ``folder``."""
    return [
        p.read_bytes()
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def encoded_batches(
    images: Sequence[bytes], size: tuple[int, int], batch: int = 64
) -> Iterator[np.ndarray]:
    """Preprocessed batches of encoded images; those that do not decode are left out."""
    pixels = []
    for data in images:
        try:
            pixels.append(preprocess(data, size))
        except ImageError:
            continue
    for start in range(0, len(pixels), batch):
        yield np.stack(pixels[start : start + batch])


def _scores(
    outputs: Any, images: Sequence[bytes], size: tuple[int, int], batch: int = 64
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ood_score, predicted class) per batch; unreadable images are skipped."""
    for pixels in encoded_batches(images, size, batch):
        out = outputs(pixels)
        yield np.reshape(out["ood_score"], (-1,)), np.argmax(out["probabilities"], axis=1)


def _contents(path: str | Path) -> bytes:
    """The file's bytes; none if it cannot be read (then it counts as unreadable)."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def check(
    model_path: str | Path,
    photos_dir: str | Path,
    categories: dict[str, list[bytes]],
    photo_limit: int | None = None,
) -> dict[str, Any]:
    """Share of each category caught, and of the cat/dog photos wrongly flagged."""
    outputs, contract = load_outputs(model_path)
    ood = contract.extra.get("ood")
    if not ood:
        raise ValueError(f"{model_path}: the model has no OOD score (export with --ood)")
    threshold = float(ood["threshold"])

    def summary(images: Sequence[bytes]) -> dict[str, Any]:
        parts = list(_scores(outputs, images, contract.image_size))
        scores = np.concatenate([s for s, _ in parts]) if parts else np.zeros(0)
        labels = np.concatenate([p for _, p in parts]) if parts else np.zeros(0, int)
        caught = int(np.sum(scores > threshold))
        return {
            "count": int(len(scores)),
            "flagged": caught,
            "flagged_share": caught / len(scores) if len(scores) else None,
            "median_score": float(np.median(scores)) if len(scores) else None,
            "called": {n: int(np.sum(labels == i)) for i, n in enumerate(contract.class_names)},
            "unreadable": len(images) - int(len(scores)),  # left out: they do not decode
        }

    paths, _ = list_images(photos_dir, contract.class_names, every_file=True)
    if photo_limit is not None:
        paths = paths[:: max(1, len(paths) // photo_limit)]
    report: dict[str, Any] = {
        "model": str(model_path),
        "threshold": threshold,
        "neither": {name: summary(images) for name, images in categories.items()},
        "photos": summary([_contents(p) for p in paths]),
    }
    total = sum(c["count"] for c in report["neither"].values())
    caught = sum(c["flagged"] for c in report["neither"].values())
    report["neither_total"] = {"count": total, "flagged": caught, "flagged_share": caught / total}
    return report


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table: images, share flagged as neither, what the label would have been."""
    lines = [
        f"threshold {report['threshold']:.4g}",
        "",
        "| images | count | flagged as neither | median score | called cat / dog |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = [*report["neither"].items(), ("all neither", report["neither_total"])]
    rows.append(("cat/dog photos (wrongly flagged)", report["photos"]))
    for name, stats in rows:
        called = stats.get("called")
        median = stats.get("median_score")
        lines.append(
            f"| {name} | {stats['count']} | {stats['flagged_share']:.1%} | "
            + ("" if median is None else f"{median:.3g}")
            + " | "
            + ("" if called is None else " / ".join(str(v) for v in called.values()))
            + " |"
        )
    left_out = [
        f"{name.split(' (')[0]}: {stats['unreadable']}"
        for name, stats in rows
        if stats.get("unreadable")
    ]
    if left_out:
        lines += ["", "left out, as they do not decode: " + ", ".join(left_out)]
    return "\n".join(lines)


def save_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``neither.json`` and ``neither.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "neither.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "neither.md").write_text(format_report(report) + "\n")
    return [out / "neither.json", out / "neither.md"]
