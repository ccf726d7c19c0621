"""The request mix of ``bench.serve``: test photos, plus 480x320 and 12 MP JPEG versions of some.

The originals are ``--n-images`` photos from ``--images`` (half from each class
folder, chosen with ``--seed``); the bigger versions are made from the first of
them (resized, with mild grain so a JPEG weighs what a camera's photo does) and
cached in ``bench/.cache/images/``. ``--mix`` gives each group's share of the
requests.
"""

from __future__ import annotations

import argparse
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.harness import CACHE

GROUPS = ("original", "480x320", "12MP")
GROUP_SIZES = {"480x320": (480, 320), "12MP": (4000, 3000)}
JPEG_QUALITY = 90
NOISE_SIGMA = 6.0  # grain, so the upscaled JPEGs weigh what a camera's photo does


@dataclass
class ImageSet:
    """JPEG bytes by group, and the probability of each group in the request mix."""

    groups: dict[str, list[tuple[str, bytes]]]
    weights: dict[str, float]

    def pick_in_group(self, rng: random.Random) -> tuple[str, tuple[str, bytes]]:
        """A group drawn from the mix, and a (file name, bytes) from that group."""
        names = [g for g in self.weights if self.groups.get(g)]
        group = rng.choices(names, [self.weights[g] for g in names])[0]
        return group, rng.choice(self.groups[group])

    def describe(self) -> dict[str, Any]:
        """Per group: how many files, their mean size in KB and the mix weight."""
        return {
            g: {"files": len(files), "weight": self.weights.get(g, 0.0)}
            | {"mean_kb": round(sum(len(b) for _, b in files) / len(files) / 1024, 1)}
            for g, files in self.groups.items()
            if files
        }


def sample_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` photos, half from each class folder (cat/dog), chosen reproducibly."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{folder}: no class folders (expected e.g. {folder}/cat/*.jpg)")
    rng = random.Random(seed)
    chosen: list[Path] = []
    for index, cls in enumerate(classes):
        files = sorted(cls.glob("*.jpg")) + sorted(cls.glob("*.jpeg"))
        share = count // len(classes) + (1 if index < count % len(classes) else 0)
        chosen += rng.sample(files, min(share, len(files)))
    rng.shuffle(chosen)
    return chosen


def make_variant(source: Path, size: tuple[int, int], seed: int) -> bytes:
    """``source`` resized to ``size`` (width, height), with mild grain, as a JPEG."""
    with Image.open(source) as image:
        resized = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, pixels.shape)
    grainy = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    grainy.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def cached_variant(source: Path, group: str, seed: int) -> bytes:
    """The ``group`` version of ``source`` from ``bench/.cache/``, made on first use."""
    path = CACHE / "images" / group / f"{source.parent.name}-{source.stem}.jpg"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(make_variant(source, GROUP_SIZES[group], seed))
        tmp.rename(path)
    return path.read_bytes()


def build_image_set(args: argparse.Namespace) -> ImageSet:
    """Originals from ``--images``, plus 480x320 and 12MP versions of some of them."""
    photos = sample_photos(Path(args.images), args.n_images, args.seed)
    counts = {"original": len(photos), "480x320": args.n_medium, "12MP": args.n_huge}
    groups = {"original": [(photo.name, photo.read_bytes()) for photo in photos]}
    for group in GROUPS[1:]:
        groups[group] = [
            (f"{group}-{p.name}", cached_variant(p, group, args.seed + i))
            for i, p in enumerate(photos[: counts[group]])
        ]
    return ImageSet(groups, dict(zip(GROUPS, args.mix)))
