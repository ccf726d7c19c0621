"""Hand-built image files for the format and size tests: hostile or odd, always small.

Each function returns file bytes without ever allocating the pixels it declares:
headers are written (or patched into a small real file) byte by byte, and the one
big real image (``solid_png``) is compressed row by row. Layouts follow the format
specifications (PNG, GIF89a, BMP/DIB, WebP RIFF, JPEG markers, Photoshop PSD, ICO).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests import images

# ---------------------------------------------------------------- formats we refuse

#: The issue's looping EPS: Ghostscript (where installed) spins on it for ~20 s.
LOOPING_EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n0 1 400000000 { pop } for\nshowpage\n"
)


def psd_bytes(size: images.Size = (4, 4), color: images.Color = images.RED) -> bytes:
    """A minimal uncompressed 8-bit RGB Photoshop file (Pillow reads PSD but cannot write it)."""
    width, height = size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)  # 3 = RGB
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers: empty
    planes = b"".join(bytes([c]) * (width * height) for c in color)
    return header + sections + struct.pack(">H", 0) + planes  # compression 0 = raw


def ico_embedding(png: bytes) -> bytes:
    """An ICO whose directory claims a 1x1 icon but whose one entry is ``png`` (the issue's)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 1, 1, 0, 0, 1, 32, len(png), 22)
    return header + entry + png


def heic_like_bytes() -> bytes:
    """The start of an iPhone HEIC file (an ISO-BMFF ``ftyp`` box, brand ``heic``)."""
    ftyp = b"ftypheic" + struct.pack(">I", 0) + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp) - 4) + ftyp + bytes(64)


# ---------------------------------------------------------------- PNG


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(
    width: int,
    height: int,
    color_type: int = 2,
    bit_depth: int = 8,
    interlace: int = 0,
    extra: bytes = b"",
) -> bytes:
    """A PNG declaring ``width`` x ``height`` with a few bytes of pixel data.

    ``extra`` is inserted before IDAT (e.g. ``PLTE``, or ``acTL``/``fcTL`` for APNG).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", zlib.compress(bytes(16)))
        + png_chunk(b"IEND", b"")
    )


def apng_header_only(width: int, height: int, frames: int = 2) -> bytes:
    """An animated PNG (``acTL`` + ``fcTL`` for the default image) declaring a big canvas."""
    actl = png_chunk(b"acTL", struct.pack(">II", frames, 0))
    fctl = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 10, 0, 0))
    return png_header_only(width, height, extra=actl + fctl)


def solid_png(side: int, rows_per_call: int = 64) -> bytes:
    """A real, fully decodable ``side`` x ``side`` transparent RGBA PNG, compressed row by row.

    Only a few rows are ever in memory (a 13000 x 13000 one is ~0.7 MB of file but
    676 MB of pixels once decoded).
    """
    compressor = zlib.compressobj(9)
    rows = (b"\x00" + bytes(side * 4)) * rows_per_call  # filter byte 0, then RGBA zeros
    parts = []
    for start in range(0, side, rows_per_call):
        count = min(rows_per_call, side - start)
        parts.append(compressor.compress(rows[: count * (side * 4 + 1)]))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- GIF


def lzw_literal(pixels: bytes) -> bytes:
    """GIF image data for palette indices 0..3, each a literal code: valid, uncompressed.

    Code size 2 (3-bit codes); a clear code after every two literals keeps the code
    table from growing, so every code stays 3 bits wide.
    """
    clear, end = 4, 5
    codes = [clear]
    for i, pixel in enumerate(pixels):
        if i and i % 2 == 0:
            codes.append(clear)
        codes.append(pixel)
    codes.append(end)
    bits = sum(code << (3 * i) for i, code in enumerate(codes))
    packed = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
    blocks = b"".join(
        bytes([len(packed[i : i + 255])]) + packed[i : i + 255] for i in range(0, len(packed), 255)
    )
    return b"\x02" + blocks + b"\x00"


def gif_bytes(
    screen: tuple[int, int],
    frame: tuple[int, int, int, int] | None = None,
    disposal: int = 0,
    frames: int = 1,
    complete: bool = False,
    before_frames: bytes = b"",
) -> bytes:
    """A GIF89a: logical ``screen`` size, each frame at ``(x, y, width, height)``.

    Unless ``complete``, a frame's data is a single pixel, so a big frame costs no
    bytes (decoding it fails as truncated). ``disposal`` 2 ("restore to background")
    makes Pillow allocate and fill the frame area as soon as it reads the frame header.
    ``before_frames`` goes between the header and the first frame (extensions, junk).
    """
    width, height = screen
    x, y, frame_width, frame_height = frame or (0, 0, width, height)
    palette = b"\x00\x00\x00\xff\xff\xff"  # global colour table, 2 entries
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + palette
    data = lzw_literal(bytes(frame_width * frame_height if complete else 1))
    one = (
        b"\x21\xf9\x04" + bytes([disposal << 2]) + b"\x0a\x00\x00\x00"  # graphic control
        b"\x2c" + struct.pack("<HHHHB", x, y, frame_width, frame_height, 0) + data
    )
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" if frames > 1 else b""
    return head + loop + before_frames + one * frames + b"\x3b"


#: A comment extension in two sub-blocks, then stray bytes (Pillow's reader skips them).
GIF_COMMENT_AND_JUNK = b"\x21\xfe\x03abc\x02de\x00" + b"\x00\x01junk\xff"


# ---------------------------------------------------------------- WebP


def webp_declaring(size: tuple[int, int], kind: str) -> bytes:
    """A small real WebP whose header is patched to declare ``size``.

    ``kind``: ``"lossy"`` (VP8), ``"lossless"`` (VP8L) or ``"animated"`` (VP8X canvas
    with two small frames, a valid file: the frames fit in any bigger canvas).
    """
    width, height = size
    small = images.solid((16, 16))
    if kind == "animated":
        other = images.solid((16, 16), images.BLUE)
        data = bytearray(
            images.encode(small, "WEBP", save_all=True, append_images=[other], duration=100)
        )
        assert data[12:16] == b"VP8X"
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == "lossless":
        data = bytearray(images.encode(small, "WEBP", lossless=True))
        assert data[12:16] == b"VP8L" and data[20] == 0x2F
        (bits,) = struct.unpack("<I", data[21:25])
        bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
        data[21:25] = struct.pack("<I", bits)
    else:
        data = bytearray(images.encode(small, "WEBP", lossless=False, quality=50))
        assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
        data[26:30] = struct.pack("<HH", width, height)  # scale bits 0
    return bytes(data)


# ---------------------------------------------------------------- BMP


def bmp_bytes(
    width: int,
    height: int,
    bits: int = 24,
    compression: int = 0,
    header_size: int = 40,
    colors: int = 0,
    masks: tuple[int, ...] = (),
    pixels: bytes = bytes(64),
) -> bytes:
    """A BMP with any header variant: ``height`` < 0 is top-down, ``header_size`` 12 is
    OS/2 (16-bit sizes), 40/108/124 Windows; ``compression`` 1/2 RLE8/RLE4, 3 bitfields."""
    if header_size == 12:
        info = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        info = struct.pack(
            "<IiiHHIIiiII", header_size, width, height, 1, bits, compression, 0, 2835, 2835, 0, 0
        )
        info += bytes(header_size - len(info))
        info += b"".join(struct.pack("<I", m) for m in masks)  # after a 40-byte header
    entry = 3 if header_size == 12 else 4
    palette = bytes(entry * (colors or (1 << bits if bits <= 8 else 0)))
    offset = 14 + len(info) + len(palette)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return file_header + info + palette + pixels


# ---------------------------------------------------------------- JPEG


def jpeg_declaring(size: tuple[int, int], data: bytes | None = None) -> bytes:
    """A real JPEG (``data``, else a small baseline one) whose first SOF declares ``size``."""
    width, height = size
    data = bytearray(data if data is not None else images.jpeg_bytes((16, 16)))
    sof = next(
        i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2)
    )
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def mpo_declaring(size: tuple[int, int]) -> bytes:
    """A two-frame MPO (phones' multi-picture JPEG) whose first frame declares ``size``."""
    first, second = images.solid((16, 16)), images.solid((16, 16), images.BLUE)
    data = images.encode(first, "MPO", save_all=True, append_images=[second])
    patched = jpeg_declaring(size, data)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    return patched


def white_png(width: int, height: int, interlace: int = 0, missing: int = 0) -> bytes:
    """A white 8-bit grey PNG, interlaced (Adam7) or not, its stream ``missing`` bytes short.

    The rows of each Adam7 pass are listed pixel by pixel here (``range`` over the
    pass's columns), not with the arithmetic the reader under test uses.
    """
    passes = [(0, 0, 1, 1)]
    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4)]
        passes += [(0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        columns = len(range(x0, width, dx))
        if columns:
            for _ in range(y0, height, dy):
                raw += b"\x00" + b"\xff" * columns
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    stream = zlib.compress(bytes(raw[: len(raw) - missing]))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )
