"""THE preprocessing of catdog: image bytes or file in, model-ready pixels out.

Training (``training.data``) and serving (``app``) both call these functions, so
the array a model sees for a file is the same in both places. The decisions:

* EXIF orientation is applied (phone photos are turned upright).
* Every mode becomes 8-bit RGB: grayscale and palette are expanded, CMYK is
  converted, 16-bit samples are scaled down (not clipped), transparency is
  composited onto white. Animated GIF/WebP use their first frame.
* Large JPEGs are decoded at a reduced DCT scale (never below the target size),
  which makes a 12-megapixel photo several times cheaper to read.
* Resize to (height, width) with bilinear filtering (antialiased when shrinking),
  aspect ratio not kept, as in the tutorial; then ``x / 255`` as float32.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from catdog.contract import IMAGE_SIZE

ImageSource = bytes | str | Path
# Called with the pixel count about to be decoded; decoding runs inside what it returns.
DecodeGate = Callable[[int], AbstractContextManager[object]]
# open_image enforces a pixel limit itself (Pillow's by default), so Pillow's warning is
# redundant. Set once here: warnings.catch_warnings() per call is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_JPEG_FAMILY = {"JPEG", "MPO"}  # MPO: a JPEG with extra frames (some phones and cameras)
# EXIF orientation -> the turn that makes the photo upright (as Pillow's exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Leading bytes of formats we read: a file that starts like one but will not open is corrupt.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _signature(head: bytes) -> str | None:
    """The image format a file's first bytes announce, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM" and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"  # the two reserved header fields are zero
    return next((name for magic, name in _SIGNATURES.items() if head.startswith(magic)), None)


class ImageError(ValueError):
    """An input that cannot become model pixels; ``reason`` is short and human."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAnImageError(ImageError):
    """The bytes are not in any image format we can read."""


class CorruptImageError(ImageError):
    """The format is recognised, but the pixels cannot be decoded."""


class ImageTooLargeError(ImageError):
    """More pixels than allowed (checked from the header, before decoding)."""


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open an image lazily, checking the format and pixel count from its header."""
    if isinstance(source, bytes):
        if not source:
            raise NotAnImageError("empty file")
        fp: io.BytesIO | str | Path = io.BytesIO(source)
    else:
        fp = source
    with _reading("unreadable image header"):
        try:
            image = Image.open(fp)
        except UnidentifiedImageError as exc:
            head = source[:16] if isinstance(source, bytes) else Path(source).read_bytes()[:16]
            if fmt := _signature(head):
                raise CorruptImageError(
                    f"a damaged {fmt} file (its header does not parse)"
                ) from exc
            raise NotAnImageError("not a recognised image format") from exc
    width, height = image.size
    if width < 1 or height < 1:
        image.close()  # a path source has an open file; do not leak it
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and width * height > limit:
        image.close()
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit}"
        )
    return image


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Any failure inside, short of running out of memory, becomes an ``ImageError``.

    Pillow's plugins raise many kinds of exception on crafted or truncated files;
    all of them mean the file is unreadable (``"<what>: <reason>"``), except a
    decompression bomb over twice Pillow's limit, which is too large.
    """
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except Exception as exc:
        raise CorruptImageError(f"{what}: {str(exc) or type(exc).__name__}") from exc


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos), leaving the metadata alone."""
    with _reading("unreadable EXIF metadata"):
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def to_rgb(image: Image.Image) -> Image.Image:
    """Turn a decoded image upright and into 8-bit RGB (see the module docstring)."""
    image = upright(image)
    if image.mode in _SIXTEEN_BIT:
        samples = np.asarray(image, dtype=np.int64)
        if samples.max(initial=0) > 255:
            samples = samples // 257
        image = Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _no_gate(pixels: int) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


def load_image(
    source: ImageSource,
    image_size: tuple[int, int] = IMAGE_SIZE,
    max_pixels: int | None = None,
    gate: DecodeGate = _no_gate,
) -> np.ndarray:
    """Decode, turn upright, convert to RGB and resize: uint8 array (height, width, 3).

    ``gate(pixels)`` wraps the decoding once the size to decode is known (after any
    reduced-scale JPEG decoding is chosen); the service uses it to bound memory.
    """
    height, width = image_size
    image = open_image(source, max_pixels=max_pixels)
    with _reading("cannot decode image"), image:
        if image.format in _JPEG_FAMILY:
            # Reduced-scale decoding keeps both sides >= the target (even if rotated).
            side = max(height, width)
            image.draft(None, (side, side))
        with gate(image.width * image.height):
            return _decode(image, (width, height))


def _decode(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Load, turn upright, make RGB, resize to (width, height); every full-size copy is
    freed on return (closing the image frees its pixels), so still inside the gate."""
    try:
        image.load()
        resized = to_rgb(image).resize(size, Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)
    finally:
        image.close()


def scale(pixels: np.ndarray) -> np.ndarray:
    """The model's input scaling: uint8 [0, 255] -> float32 [0, 1]."""
    return pixels.astype(np.float32) / np.float32(255.0)


def preprocess(
    source: ImageSource,
    image_size: tuple[int, int] = IMAGE_SIZE,
    max_pixels: int | None = None,
    gate: DecodeGate = _no_gate,
) -> np.ndarray:
    """Image bytes or path -> float32 array (height, width, 3) in [0, 1], ready for the model."""
    return scale(load_image(source, image_size, max_pixels=max_pixels, gate=gate))
