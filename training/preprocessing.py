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

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.contract import IMAGE_SIZE

ImageSource = bytes | str | Path
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except UnidentifiedImageError as exc:
        head = source[:16] if isinstance(source, bytes) else Path(source).read_bytes()[:16]
        if fmt := _signature(head):
            raise CorruptImageError(f"a damaged {fmt} file (its header does not parse)") from exc
        raise NotAnImageError("not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImageError(f"unreadable image header: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        image.close()  # a path source has an open file; do not leak it
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Turn a decoded image upright and into 8-bit RGB (see the module docstring)."""
    image = ImageOps.exif_transpose(image)
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


def load_image(
    source: ImageSource,
    image_size: tuple[int, int] = IMAGE_SIZE,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode, turn upright, convert to RGB and resize: uint8 array (height, width, 3)."""
    height, width = image_size
    image = open_image(source, max_pixels=max_pixels)
    try:
        with image:
            if image.format == "JPEG":
                # Reduced-scale decoding keeps both sides >= the target (even if rotated).
                side = max(height, width)
                image.draft(None, (side, side))
            image.load()
            rgb = to_rgb(image)
            resized = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(resized, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise CorruptImageError(f"cannot decode image: {exc}") from exc


def scale(pixels: np.ndarray) -> np.ndarray:
    """The model's input scaling: uint8 [0, 255] -> float32 [0, 1]."""
    return pixels.astype(np.float32) / np.float32(255.0)


def preprocess(
    source: ImageSource,
    image_size: tuple[int, int] = IMAGE_SIZE,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Image bytes or path -> float32 array (height, width, 3) in [0, 1], ready for the model."""
    return scale(load_image(source, image_size, max_pixels=max_pixels))
