"""Real image files and bytes for tests, made with Pillow (no fixtures on disk).

Every ``*_bytes`` function returns the encoded file content; ``write`` puts bytes
into a file. The pet helpers make small, easily separable pictures: cats are
reddish, dogs are bluish, with seeded noise so no two images are identical.

Typical use::

    from tests import images

    data = images.jpeg_bytes((40, 30), progressive=True)
    path = images.write(tmp_path / "cat.jpg", data)
    images.write_split(tmp_path / "split", {"train": 8, "validation": 4, "test": 4})
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

Size = tuple[int, int]  # (width, height), as Pillow counts
Color = tuple[int, int, int]

RED: Color = (200, 40, 40)
BLUE: Color = (40, 60, 200)
GREEN: Color = (40, 180, 60)
YELLOW: Color = (230, 210, 40)
PET_COLORS: dict[str, Color] = {"cat": RED, "dog": BLUE}
SPLITS = ("train", "validation", "test")

#: Type of the ``make_split`` fixture (``tests/conftest.py``):
#: ``(name, per_split, size, seed) -> root``.
MakeSplit = Callable[..., Path]

# EXIF orientation -> the transpose that turns the stored pixels upright
# (what ``PIL.ImageOps.exif_transpose`` applies). Written out here, not imported from
# catdog.preprocessing: the tests' own table, so a wrong entry there cannot hide.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}
EXIF_ORIENTATION = 274


# ---------------------------------------------------------------- pictures


def solid(size: Size = (32, 32), color: Color = RED, mode: str = "RGB") -> Image.Image:
    """A single-colour image (converted to ``mode``)."""
    return Image.new("RGB", size, color).convert(mode)


def noisy(size: Size = (32, 32), color: Color = RED, noise: int = 30, seed: int = 0) -> Image.Image:
    """An RGB image of ``color`` plus seeded uniform noise of +-``noise`` per channel."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = np.asarray(color, dtype=np.int16)
    jitter = rng.integers(-noise, noise + 1, size=(height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(base + jitter, 0, 255).astype(np.uint8), mode="RGB")


def pet(label: str, size: Size = (32, 32), seed: int = 0) -> Image.Image:
    """A synthetic "cat" (reddish) or "dog" (bluish) picture, distinct for each seed."""
    return noisy(size, PET_COLORS[label], noise=30, seed=seed)


def halves(size: Size = (64, 32), left: Color = RED, right: Color = BLUE) -> Image.Image:
    """An image whose left half is ``left`` and right half is ``right``."""
    width, height = size
    image = Image.new("RGB", size, right)
    image.paste(Image.new("RGB", (width // 2, height), left), (0, 0))
    return image


def quadrants(
    size: Size = (64, 32),
    colors: tuple[Color, Color, Color, Color] = (RED, BLUE, GREEN, YELLOW),
) -> Image.Image:
    """An image of four solid quarters: top-left, top-right, bottom-left, bottom-right.

    Any rotation or mirroring of it is distinguishable from the original.
    """
    width, height = size
    image = Image.new("RGB", size)
    corners = [(0, 0), (width // 2, 0), (0, height // 2), (width // 2, height // 2)]
    for corner, color in zip(corners, colors):
        image.paste(Image.new("RGB", (width // 2, height // 2), color), corner)
    return image


# ---------------------------------------------------------------- encoders


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode ``image`` in format ``fmt`` (a Pillow format name) with save options."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(
    size: Size = (32, 32),
    color: Color = RED,
    progressive: bool = False,
    quality: int = 90,
    image: Image.Image | None = None,
) -> bytes:
    """A baseline (or progressive) RGB JPEG of ``image`` or of a solid colour."""
    image = image if image is not None else solid(size, color)
    return encode(image, "JPEG", quality=quality, progressive=progressive)


def jpeg_cmyk_bytes(size: Size = (32, 32), color: Color = RED) -> bytes:
    """A CMYK JPEG (as some print workflows produce)."""
    return encode(solid(size, color, mode="CMYK"), "JPEG", quality=90)


def jpeg_grayscale_bytes(size: Size = (32, 32), level: int = 128) -> bytes:
    """A single-channel (mode ``L``) JPEG of one grey level."""
    return encode(Image.new("L", size, level), "JPEG", quality=90)


def exif_rotated_jpeg_bytes(image: Image.Image, orientation: int = 6, quality: int = 95) -> bytes:
    """A JPEG whose stored pixels are turned so that applying EXIF ``orientation`` gives ``image``.

    A viewer that honours EXIF shows ``image``; one that ignores it shows it
    rotated or mirrored (for orientations 5-8 also with width and height swapped).
    """
    upright = _UPRIGHT[orientation]
    stored = image.transpose(_INVERSE.get(upright, upright))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif)


def exif_mistyped_tag_jpeg_bytes(image: Image.Image, orientation: int = 6) -> bytes:
    """Like ``exif_rotated_jpeg_bytes``, plus a tag whose stored type is not the one EXIF defines.

    The camera-make tag (ASCII) is renumbered as TransferRange, which EXIF defines as
    numbers. Reading such metadata works; writing it back (Pillow's ``exif_transpose``
    does, for turned photos) raises ``struct.error``.
    """
    upright = _UPRIGHT[orientation]
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make, ASCII
    exif[EXIF_ORIENTATION] = orientation
    raw = exif.tobytes()
    entry = b"\x01\x0f\x00\x02"  # big-endian ("MM") tag 0x010F, type 2 (ASCII)
    assert raw.count(entry) == 1
    raw = raw.replace(entry, b"\x01\x56\x00\x02")  # tag 0x0156 (TransferRange), still ASCII
    stored = image.transpose(_INVERSE.get(upright, upright))
    return encode(stored, "JPEG", quality=95, exif=raw)


def dds_unknown_format_bytes() -> bytes:
    """A DDS header announcing a pixel format Pillow doesn't implement (``NotImplementedError``)."""
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    pixel_format = struct.pack("<2I", 32, 0x4) + b"ABCD" + bytes(20)
    caps = struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    return b"DDS " + header + pixel_format + caps + bytes(64)


def png_rgba_bytes(size: Size = (32, 32), color: Color = RED, alpha: int = 0) -> bytes:
    """An RGBA PNG of one colour at opacity ``alpha`` (0 = fully transparent)."""
    return encode(Image.new("RGBA", size, (*color, alpha)), "PNG")


def png_palette_bytes(
    size: Size = (32, 32), color: Color = RED, transparent: bool = False
) -> bytes:
    """A palette (mode ``P``) PNG; with ``transparent`` its one colour is transparent."""
    image = solid(size, color).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    options: dict[str, object] = {}
    if transparent:
        options["transparency"] = image.getpixel((0, 0))
    return encode(image, "PNG", **options)


def png_16bit_bytes(size: Size = (32, 32), value: int = 128 * 257) -> bytes:
    """A 16-bit grayscale PNG (mode ``I;16``) of one sample ``value`` in [0, 65535]."""
    width, height = size
    samples = np.full((height, width), value, dtype=np.uint16)
    return encode(Image.fromarray(samples), "PNG")


def png_header_only_bytes(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB pixels, but with almost no pixel data.

    Opening it (which reads the header) works; decoding it would fail. Good for
    checking that size limits are enforced before decoding.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def gif_bytes(size: Size = (32, 32), colors: tuple[Color, ...] = (RED,)) -> bytes:
    """A GIF with one frame per colour (animated when several are given)."""
    frames = [solid(size, c).convert("P", palette=Image.Palette.ADAPTIVE) for c in colors]
    options: dict[str, object] = {}
    if len(frames) > 1:
        options = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    return encode(frames[0], "GIF", **options)


def webp_bytes(size: Size = (32, 32), color: Color = RED, lossless: bool = True) -> bytes:
    """A WebP image (lossless by default, so colours survive exactly)."""
    return encode(solid(size, color), "WEBP", lossless=lossless)


def bmp_bytes(size: Size = (32, 32), color: Color = RED) -> bytes:
    """An uncompressed 24-bit BMP."""
    return encode(solid(size, color), "BMP")


def tiff_bytes(size: Size = (32, 32), color: Color = RED) -> bytes:
    """An uncompressed RGB TIFF (a format catdog refuses: not in its allow-list)."""
    return encode(solid(size, color), "TIFF")


def truncated_jpeg_bytes(size: Size = (64, 64), keep: float = 0.5) -> bytes:
    """A noisy JPEG cut after ``keep`` of its bytes: the header is fine, the pixels are not."""
    data = jpeg_bytes(image=noisy(size, RED, noise=60))
    return data[: int(len(data) * keep)]


def text_bytes(text: str = "This is not an image.\n") -> bytes:
    """Plain text, e.g. to stand in for ``Thumbs.db`` or a stray README."""
    return text.encode()


EMPTY: bytes = b""

#: A decodable example of each accepted format/mode: name -> bytes factory.
DECODABLE: dict[str, Callable[[], bytes]] = {
    "jpeg-baseline": jpeg_bytes,
    "jpeg-progressive": lambda: jpeg_bytes(progressive=True),
    "jpeg-cmyk": jpeg_cmyk_bytes,
    "jpeg-grayscale": jpeg_grayscale_bytes,
    "png-rgba": lambda: png_rgba_bytes(alpha=128),
    "png-palette": png_palette_bytes,
    "png-palette-transparent": lambda: png_palette_bytes(transparent=True),
    "png-16bit": png_16bit_bytes,
    "gif": gif_bytes,
    "gif-animated": lambda: gif_bytes(colors=(RED, BLUE)),
    "webp": webp_bytes,
    "bmp": bmp_bytes,
}


# ---------------------------------------------------------------- files and folders


def write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pet_jpeg_bytes(label: str, size: Size = (32, 32), seed: int = 0) -> bytes:
    """A JPEG of ``pet(label, size, seed)``."""
    return jpeg_bytes(image=pet(label, size, seed))


def write_raw_flat(
    root: str | Path, per_class: int, size: Size = (32, 32), seed: int = 0
) -> list[Path]:
    """The Kaggle competition layout: ``root/cat.N.jpg`` and ``root/dog.N.jpg``."""
    root = Path(root)
    return [
        write(root / f"{label}.{i}.jpg", pet_jpeg_bytes(label, size, seed * 100_003 + k * 7919 + i))
        for k, label in enumerate(PET_COLORS)
        for i in range(per_class)
    ]


def write_raw_class_folders(
    root: str | Path, per_class: int, size: Size = (32, 32), seed: int = 0
) -> list[Path]:
    """The Microsoft layout: ``root/Cat/N.jpg`` and ``root/Dog/N.jpg`` (root = ``PetImages``)."""
    root = Path(root)
    return [
        write(
            root / label.capitalize() / f"{i}.jpg",
            pet_jpeg_bytes(label, size, seed * 100_003 + k * 7919 + i),
        )
        for k, label in enumerate(PET_COLORS)
        for i in range(per_class)
    ]


def write_split(
    root: str | Path,
    per_split: Mapping[str, int] | int = 4,
    size: Size = (32, 32),
    seed: int = 0,
) -> Path:
    """A prepared-style folder ``root/{train,validation,test}/{cat,dog}/*.jpg``.

    ``per_split`` is the number of images per class in each split (one number
    for all splits, or a mapping such as ``{"train": 8, "validation": 4}``).
    Returns ``root``.
    """
    root = Path(root)
    counts = dict.fromkeys(SPLITS, per_split) if isinstance(per_split, int) else dict(per_split)
    for s, (split, count) in enumerate(counts.items()):
        for k, label in enumerate(PET_COLORS):
            for i in range(count):
                image_seed = seed * 100_003 + s * 10_007 + k * 7919 + i
                write(
                    root / split / label / f"{label}.{i:04d}.jpg",
                    pet_jpeg_bytes(label, size, image_seed),
                )
    return root
