"""THE preprocessing of catdog: image bytes or file in, model-ready pixels out.

Training (``training.data``, ``training.prepare``) and serving (``app``) both call
these functions, so the array a model sees for a file is the same in both places.
The decisions:

* Only an allow-list of formats is read, decided from the file's first bytes before
  any Pillow plugin is asked to open it: by default ``ACCEPTED_FORMATS`` = JPEG, PNG,
  GIF, WebP and BMP, what the README and the page promise. That covers what phones
  upload: camera JPEGs, including MPO (the multi-picture JPEG some phones and
  cameras write, read by the JPEG plugin as its first picture) and Ultra HDR JPEGs;
  screenshots (PNG); WebP from Android and messengers. iPhones shoot HEIC, but
  browsers hand a web page a JPEG of it, and Pillow here has no HEIC decoder anyway
  (that needs the pillow-heif plugin). AVIF, which Pillow 13 can read, is not
  accepted: no phone camera writes it by default and its decoder is one more large
  attack surface. Everything else Pillow could open -- EPS (which runs Ghostscript),
  JPEG 2000, TIFF, PSD, ICO (which decodes inside ``Image.open``), DDS, ... -- is
  refused as ``NotAnImageError`` naming the format and the accepted ones, without
  any of its code running. ``formats=`` narrows the list (Pillow format names, any
  case; ``"JPEG,PNG"`` also works); it can only name ``READABLE_FORMATS``, the
  formats checked (``tests/catdog/test_formats.py``) to reveal their size before
  decoding any pixel.
* The pixel count is checked against ``max_pixels`` (the caller's, else
  ``DEFAULT_MAX_PIXELS``, Pillow's own default) from the header, before any pixel is
  decoded or allocated: GIF and WebP sizes are read from their headers before Pillow
  opens them (Pillow's GIF plugin fills a frame-sized buffer when the first frame
  asks to be disposed to the background, its WebP plugin allocates the canvas);
  JPEG, PNG and BMP are opened lazily by Pillow, which reads their headers only.
  Pillow's own decompression-bomb limit is switched off process-wide
  (``Image.MAX_IMAGE_PIXELS = None``) because every image goes through this check,
  so a refusal always names the caller's limit, which may be above Pillow's.
* The pixels a file claims are bounded by the bytes it has: above
  ``FREE_PIXELS``, at most ``max_pixels_per_byte`` (default
  ``DEFAULT_MAX_PIXELS_PER_BYTE``) pixels per byte of file, checked from the header
  before anything is decoded. Decoding costs time per pixel claimed, not per byte
  sent, so without it a 300-byte file claiming 49 megapixels took a second of CPU.
  Photos have 3-13 pixels per byte, PNG screenshots about 25; the default refuses
  only near-empty pictures (a blank 4000x3000 GIF has 1,237, a blank 1-bit PNG
  2,600-3,800) and files whose data stops short of the size they claim
  (``bench/decode_ratio.py`` at commit ef329f7 measured the table in docs/service.md).
* A PNG must hold data for every row it claims: its compressed stream is counted
  (inflated and discarded) before Pillow decodes it, since Pillow fills missing rows
  with zeros without a word. Other formats raise when their data runs out.
* EXIF orientation is applied (phone photos are turned upright).
* Every mode becomes 8-bit RGB: grayscale and palette are expanded, CMYK is
  converted, 16-bit samples are scaled down (not clipped), transparency is
  composited onto white. Animated GIF/WebP/PNG use their first frame.
* Large JPEGs are decoded at a reduced DCT scale (never below the target size),
  which makes a 12-megapixel photo several times cheaper to read.
* Resize to (height, width) with bilinear filtering (antialiased when shrinking),
  aspect ratio not kept, as in the tutorial; then ``x / 255`` as float32.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from catdog.contract import IMAGE_SIZE

# bytes-like: a file's bytes, or a view of them inside a request body.
ImageSource = bytes | memoryview | str | Path
# Called with the pixel count about to be decoded; decoding runs inside what it returns.
DecodeGate = Callable[[int], AbstractContextManager[object]]

#: Formats read by default (Pillow format names): what the README promises.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
#: Formats an allow-list may name: their size is known before any pixel is decoded
#: or allocated (checked format by format in tests/catdog/test_formats.py).
READABLE_FORMATS: tuple[str, ...] = ACCEPTED_FORMATS
#: The pixel limit when the caller gives none: Pillow's default (~0.36 GB as RGBA).
DEFAULT_MAX_PIXELS = 89_478_485
#: Pixels per byte of file allowed above ``FREE_PIXELS`` (see the module docstring).
DEFAULT_MAX_PIXELS_PER_BYTE = 1024
#: Pixels any file may claim whatever its size: a megapixel decodes in ~20 ms.
FREE_PIXELS = 1_000_000
# open_image checks every size itself, with the caller's limit; Pillow's own check
# (and its warning) would quote Pillow's limit instead, and refuse above it.
Image.MAX_IMAGE_PIXELS = None

_NAMES = {"WEBP": "WebP"}  # how formats are written in messages
_ALIASES = {"JPG": "JPEG", "MPO": "JPEG"}  # MPO files are opened by the JPEG plugin
# ISO-BMFF brands of HEIC/HEIF photos, which Pillow cannot even identify without a plugin.
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_HEAD = 32  # bytes read to identify a file and find a WebP canvas size
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


def image_formats(formats: Collection[str] | str) -> tuple[str, ...]:
    """Check an allow-list and return it as Pillow format names, in the order given.

    Names are Pillow's, in any case (``"JPG"`` and ``"MPO"`` mean ``"JPEG"``); a string
    is a comma-separated list. Raises ``ValueError`` for an empty list or a format
    not in ``READABLE_FORMATS``.
    """
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    wanted = [_ALIASES.get(n.strip().upper(), n.strip().upper()) for n in names if n.strip()]
    choices = _listed(READABLE_FORMATS)
    unknown = [n for n in wanted if n not in READABLE_FORMATS]
    if unknown or not wanted:
        what = f"image format(s) {', '.join(unknown)} cannot be" if unknown else "no format"
        raise ValueError(
            f"{what} accepted: choose among {choices} (formats whose size is read first)"
        )
    return tuple(dict.fromkeys(wanted))


def open_image(
    source: ImageSource,
    max_pixels: int | None = None,
    formats: Collection[str] | str = ACCEPTED_FORMATS,
    max_pixels_per_byte: int | None = DEFAULT_MAX_PIXELS_PER_BYTE,
) -> Image.Image:
    """Open an image lazily, checking its format and pixel count before any pixel is read.

    ``formats`` is the allow-list (see ``image_formats``); anything else raises
    ``NotAnImageError`` naming the accepted formats, before any Pillow plugin opens it.
    More than ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``) raises
    ``ImageTooLargeError``; more than ``max_pixels_per_byte`` pixels per byte of file
    above ``FREE_PIXELS`` (``None``: no bound) raises ``CorruptImageError``. A path
    source's file is closed when the image is.
    """
    allowed = image_formats(formats)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, memoryview):  # a file inside a request: its own copy while it decodes
        source = source.tobytes()
    with _reading("unreadable image header"), _binary(source) as file:
        head = file.read(_HEAD)
        if not head:
            raise NotAnImageError("empty file")
        fmt = next((f for f in allowed if _plugin_accepts(f, head)), None)
        if fmt is None:
            raise _refusal(head, allowed)
        declared = _declared_size(fmt, head, file)
        file_bytes = file.seek(0, io.SEEK_END)
    if declared is not None:
        _check_size(declared, limit)  # before Pillow's plugin allocates anything
        _check_density(declared, file_bytes, max_pixels_per_byte)
    fp: io.BytesIO | str | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    with _reading("unreadable image header"):
        try:
            image = Image.open(fp, formats=[fmt])
        except UnidentifiedImageError as exc:
            raise CorruptImageError(
                f"a damaged {_listed([fmt])} file (its header does not parse)"
            ) from exc
    width, height = image.size
    try:
        if width < 1 or height < 1:
            raise CorruptImageError(f"image has no pixels ({width}x{height})")
        _check_size((width, height), limit)
        _check_density((width, height), file_bytes, max_pixels_per_byte)
    except ImageError:
        image.close()  # a path source has an open file; do not leak it
        raise
    return image


def _check_size(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit}"
        )


def _check_density(size: tuple[int, int], file_bytes: int, per_byte: int | None) -> None:
    """Refuse a file claiming more than ``per_byte`` pixels per byte above ``FREE_PIXELS``."""
    width, height = size
    if per_byte is None or width * height <= max(FREE_PIXELS, per_byte * file_bytes):
        return
    raise CorruptImageError(
        f"{width}x{height} pixels claimed by a file of {file_bytes} bytes: more than "
        f"{per_byte} pixels per byte; the file is truncated or crafted"
    )


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
_ADAM7 += ((0, 1, 1, 2),)


def _png_row_bytes(data: bytes) -> int:
    """The bytes a PNG's image data inflates to: a filter byte and the samples, per row."""
    width, height, depth, colour, interlace = struct.unpack_from(">IIBBxxB", data, 16)
    bits = depth * _PNG_CHANNELS.get(colour, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def _check_png_rows(image: Image.Image, data: bytes) -> None:
    """Refuse a PNG whose compressed image data ends before its last row.

    Pillow decodes such a file without complaint, leaving the missing rows black, so
    the stream is inflated here (and thrown away, a megabyte at a time) and its
    length compared with the rows the header claims. An APNG's first frame is its
    IDAT chunks, as for any PNG.
    """
    want = _png_row_bytes(data)
    inflate = zlib.decompressobj()
    got, at = 0, 8
    while at + 8 <= len(data) and got < want:
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"IDAT":
            pending = data[at + 8 : at + 8 + length]
            while pending and got < want:
                got += len(inflate.decompress(pending, 1 << 20))
                pending = inflate.unconsumed_tail
        elif kind == b"IEND":
            break
        at += 12 + length
    if got < want:
        raise CorruptImageError(
            f"a truncated PNG file: its data fills {got * 100 // want}% of the "
            f"{image.width}x{image.height} pixels it claims"
        )


def _listed(formats: Collection[str]) -> str:
    """``"JPEG, PNG, WebP"``: formats as messages write them."""
    return ", ".join(_NAMES.get(f, f) for f in formats)


@contextlib.contextmanager
def _binary(source: ImageSource) -> Iterator[BinaryIO]:
    """The source as a readable binary file (opened, then closed, for a path)."""
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    else:
        with open(source, "rb") as file:
            yield file


@functools.cache
def _plugins() -> dict[str, tuple[Callable[..., object], Callable[[bytes], object] | None]]:
    """Pillow's registry of readable formats, with every plugin registered."""
    Image.init()
    return Image.OPEN  # type: ignore[return-value]


def _plugin_accepts(fmt: str, head: bytes) -> bool:
    """Whether Pillow's plugin for ``fmt`` would try to open a file starting with ``head``.

    This is the plugin's own magic-number test (what ``Image.open`` asks first); it
    reads only these bytes, no plugin code beyond it runs.
    """
    accept = _plugins()[fmt][1]
    try:
        return accept is None or bool(accept(head[:16]))
    except Exception:  # a test that fails on a short or odd prefix is a "no"
        return False


def _refusal(head: bytes, allowed: Collection[str]) -> NotAnImageError:
    """The 415 for a file not in ``allowed``: name its format if its first bytes tell."""
    accepted = f"accepted: {_listed(allowed)}"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIC_BRANDS:
        return NotAnImageError(f"unsupported image format HEIC; {accepted}")
    for fmt, (_, accept) in _plugins().items():
        # Only magic-number tests; formats without one (TGA, ...) are never guessed.
        if fmt not in allowed and accept is not None and _plugin_accepts(fmt, head):
            return NotAnImageError(f"unsupported image format {_listed([fmt])}; {accepted}")
    return NotAnImageError(f"not a recognised image format; {accepted}")


def _declared_size(fmt: str, head: bytes, file: BinaryIO) -> tuple[int, int] | None:
    """The size a GIF or WebP header declares, read before Pillow opens the file.

    Pillow allocates while opening these two (the WebP canvas; for a GIF whose first
    frame is disposed to the background, a frame-sized buffer, filled), so their size
    must be known first. ``None`` for the formats Pillow opens without allocating.
    """
    if fmt == "WEBP":
        return _webp_size(head)
    if fmt != "GIF":
        return None
    if isinstance(file, io.BytesIO):
        with file.getbuffer() as view:  # no copy of an upload
            return _gif_size(view)
    file.seek(0)
    return _gif_size(file.read())


def _webp_size(head: bytes) -> tuple[int, int]:
    """The canvas size in a WebP's first chunk (VP8X canvas, else the VP8/VP8L frame)."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return (
            int.from_bytes(head[24:27], "little") + 1,
            int.from_bytes(head[27:30], "little") + 1,
        )
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        (bits,) = struct.unpack("<I", head[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    # The first chunk of a valid WebP is one of these three (its decoder refuses others).
    raise CorruptImageError("a damaged WebP file (its header declares no size)")


_GIF_BLOCK = re.compile(rb"[!,;]")  # extension, image descriptor, trailer


def _gif_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """The size Pillow gives a GIF: its screen, grown to hold the first frame.

    Walks the blocks before the first image descriptor as Pillow's reader does (it
    skips stray bytes between blocks too). ``None`` if there is no full screen
    descriptor; a file that ends before a frame keeps the screen size (Pillow then
    refuses it as damaged).
    """
    if len(data) < 13:
        return None
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    while found := _GIF_BLOCK.search(data, at):
        at = found.end()
        if data[found.start()] == ord(";"):
            break
        if data[found.start()] == ord("!"):  # label, then sub-blocks up to an empty one
            at += 1
            while at < len(data) and data[at]:
                at += 1 + data[at]
            at += 1
            continue
        if at + 8 > len(data):
            break
        x, y, frame_width, frame_height = struct.unpack_from("<HHHH", data, at)
        return max(width, x + frame_width), max(height, y + frame_height)
    return width, height


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Any failure inside, short of running out of memory, becomes an ``ImageError``.

    Pillow's plugins raise many kinds of exception on crafted or truncated files;
    all of them mean the file is unreadable (``"<what>: <reason>"``). (Pillow's own
    decompression-bomb error is off, see the module docstring; should someone turn it
    back on, it still means too large.)
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
    formats: Collection[str] | str = ACCEPTED_FORMATS,
    max_pixels_per_byte: int | None = DEFAULT_MAX_PIXELS_PER_BYTE,
) -> np.ndarray:
    """Decode, turn upright, convert to RGB and resize: uint8 array (height, width, 3).

    ``max_pixels``, ``formats`` and ``max_pixels_per_byte`` are checked first, as in
    ``open_image``; a PNG whose data stops short of its rows raises ``CorruptImageError``.
    ``gate(pixels)`` wraps the decoding once the size to decode is known (after any
    reduced-scale JPEG decoding is chosen); the service uses it to bound memory.
    """
    height, width = image_size
    if isinstance(source, memoryview):
        source = source.tobytes()  # read twice below: one copy, not two
    image = open_image(source, max_pixels, formats, max_pixels_per_byte)
    with _reading("cannot decode image"), image:
        if image.format == "PNG":
            _check_png_rows(
                image, source if isinstance(source, bytes) else Path(source).read_bytes()
            )
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
    formats: Collection[str] | str = ACCEPTED_FORMATS,
    max_pixels_per_byte: int | None = DEFAULT_MAX_PIXELS_PER_BYTE,
) -> np.ndarray:
    """Image bytes or path -> float32 array (height, width, 3) in [0, 1], ready for the model.

    Arguments as ``load_image``; the service passes its settings as ``max_pixels``,
    ``gate``, ``formats`` and ``max_pixels_per_byte``.
    """
    return scale(load_image(source, image_size, max_pixels, gate, formats, max_pixels_per_byte))
