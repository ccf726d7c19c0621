"""``catdog.preprocessing``: every format and mode to upright 8-bit RGB, and clear errors."""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog.preprocessing import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_PIXELS_PER_BYTE,
    FREE_PIXELS,
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    load_image,
    preprocess,
)
from tests import images
from tests.catdog import crafted

SIZE = (24, 40)  # (height, width): not square, so a swapped order would show


def assert_close_to(pixels: np.ndarray, color: tuple[int, int, int], tolerance: int = 6) -> None:
    """Every pixel is within ``tolerance`` of ``color`` in every channel."""
    diff = np.abs(pixels.astype(int) - np.asarray(color))
    assert diff.max() <= tolerance, f"max diff {diff.max()} from {color}"


@pytest.mark.parametrize("name", sorted(images.DECODABLE))
def test_every_format_gives_rgb_uint8(name: str) -> None:
    pixels = load_image(images.DECODABLE[name](), SIZE)
    assert pixels.shape == (*SIZE, 3)
    assert pixels.dtype == np.uint8


@pytest.mark.parametrize(
    "data",
    [
        images.jpeg_bytes(),
        images.jpeg_bytes(progressive=True),
        images.jpeg_cmyk_bytes(),
        images.png_palette_bytes(),
        images.gif_bytes(),
        images.gif_bytes(colors=(images.RED, images.BLUE)),  # first frame
        images.webp_bytes(),
        images.bmp_bytes(),
    ],
    ids=["jpeg", "progressive", "cmyk", "palette", "gif", "animated-gif", "webp", "bmp"],
)
def test_colours_survive_decoding(data: bytes) -> None:
    assert_close_to(load_image(data, SIZE), images.RED)


def test_preprocess_is_load_image_over_255_in_float32() -> None:
    data = images.jpeg_bytes(image=images.noisy((50, 30), noise=80))
    pixels = load_image(data, SIZE)
    scaled = preprocess(data, SIZE)
    assert scaled.dtype == np.float32 and scaled.shape == (*SIZE, 3)
    assert scaled.min() >= 0.0 and scaled.max() <= 1.0
    np.testing.assert_array_equal(scaled, pixels.astype(np.float32) / np.float32(255))


def test_path_and_bytes_give_the_same_pixels(tmp_path: Path) -> None:
    data = images.jpeg_bytes(image=images.noisy((50, 30), noise=80))
    path = images.write(tmp_path / "x.jpg", data)
    np.testing.assert_array_equal(preprocess(path, SIZE), preprocess(data, SIZE))
    np.testing.assert_array_equal(preprocess(str(path), SIZE), preprocess(data, SIZE))


def test_a_view_into_a_larger_buffer_gives_the_same_pixels() -> None:
    """A file inside a request body, passed as a view of just its bytes."""
    data = images.jpeg_bytes(image=images.noisy((50, 30), noise=80))
    body = b"head" + data + b"tail"
    view = memoryview(body)[4 : 4 + len(data)]
    np.testing.assert_array_equal(preprocess(view, SIZE), preprocess(data, SIZE))


def test_resize_is_height_then_width() -> None:
    pixels = load_image(images.jpeg_bytes(image=images.halves((64, 32))), (10, 30))
    assert pixels.shape == (10, 30, 3)
    assert_close_to(pixels[:, :12], images.RED, tolerance=12)
    assert_close_to(pixels[:, -12:], images.BLUE, tolerance=12)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_rotated_jpeg_comes_out_upright(orientation: int) -> None:
    # Four coloured quarters, not square: any wrong turn or mirror shows.
    upright = images.quadrants((64, 32))
    expected = load_image(images.jpeg_bytes(image=upright, quality=95), (32, 64))

    got = load_image(images.exif_rotated_jpeg_bytes(upright, orientation), (32, 64))

    assert np.abs(got.astype(int) - expected).max() <= 8
    assert_close_to(got[:12, :28], images.RED, tolerance=10)  # top left
    assert_close_to(got[:12, 36:], images.BLUE, tolerance=10)  # top right
    assert_close_to(got[20:, :28], images.GREEN, tolerance=10)  # bottom left
    assert_close_to(got[20:, 36:], images.YELLOW, tolerance=10)  # bottom right


def test_a_mistyped_exif_tag_does_not_stop_a_turned_photo() -> None:
    # Pillow's exif_transpose rewrites the metadata and raised struct.error here (a 500).
    upright = images.quadrants((64, 32))
    got = load_image(images.exif_mistyped_tag_jpeg_bytes(upright, 6), (32, 64))
    expected = load_image(images.jpeg_bytes(image=upright, quality=95), (32, 64))
    assert np.abs(got.astype(int) - expected).max() <= 8


def test_mpo_photos_are_decoded_like_jpegs() -> None:
    # MPO (a JPEG plus extra frames) takes the reduced-scale JPEG path: same pixels.
    photo = images.noisy((1200, 900), noise=10)
    mpo = images.encode(photo, "MPO", quality=90, save_all=True, append_images=[photo])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    jpeg = images.encode(photo, "JPEG", quality=90)
    np.testing.assert_array_equal(load_image(mpo, (224, 224)), load_image(jpeg, (224, 224)))


def test_exif_orientation_is_what_makes_the_difference() -> None:
    upright = images.halves((64, 32))
    data = images.exif_rotated_jpeg_bytes(upright, 6)
    stored = images.jpeg_bytes(image=Image.open(io.BytesIO(data)).copy(), quality=95)
    without_exif = load_image(stored, (32, 64))
    # Without the tag, the red half is on top instead of on the left.
    assert not np.allclose(without_exif, load_image(data, (32, 64)), atol=20)


def test_transparent_pixels_are_composited_on_white() -> None:
    assert_close_to(load_image(images.png_rgba_bytes(alpha=0), SIZE), (255, 255, 255), 0)
    assert_close_to(load_image(images.png_rgba_bytes(alpha=255), SIZE), images.RED, 0)
    half = load_image(images.png_rgba_bytes(alpha=128), SIZE)
    blended = tuple(round(c * 128 / 255 + 255 * 127 / 255) for c in images.RED)
    assert_close_to(half, blended, tolerance=1)
    transparent_palette = load_image(images.png_palette_bytes(transparent=True), SIZE)
    assert_close_to(transparent_palette, (255, 255, 255), 0)


@pytest.mark.parametrize(("sample", "level"), [(0, 0), (128 * 257, 128), (65535, 255)])
def test_16bit_png_is_scaled_not_clipped(sample: int, level: int) -> None:
    assert_close_to(load_image(images.png_16bit_bytes(value=sample), SIZE), (level,) * 3, 1)


def test_grayscale_is_expanded_to_three_equal_channels() -> None:
    pixels = load_image(images.jpeg_grayscale_bytes(level=90), SIZE)
    assert_close_to(pixels, (90, 90, 90), tolerance=2)


BAD_INPUTS: dict[str, tuple[Callable[[], bytes], type[ImageError]]] = {
    "truncated-jpeg": (images.truncated_jpeg_bytes, CorruptImageError),
    "text": (images.text_bytes, NotAnImageError),
    "empty": (lambda: images.EMPTY, NotAnImageError),
    "html": (lambda: b"<!doctype html><html></html>", NotAnImageError),
    # Not an accepted format: refused before Pillow's DDS plugin (NotImplementedError) runs.
    "dds-unknown-pixel-format": (images.dds_unknown_format_bytes, NotAnImageError),
    # Pillow's BMP plugin raises OSError while opening: any plugin failure is "corrupt".
    "bmp-unknown-compression": (lambda: crafted.bmp_bytes(4, 4, compression=9), CorruptImageError),
    "webp-lossy-without-start-code": (
        lambda: b"RIFF\x20\0\0\0WEBPVP8 " + bytes(24),
        CorruptImageError,
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_bytes_raise_the_right_error(name: str) -> None:
    make, error = BAD_INPUTS[name]
    with pytest.raises(error) as info:
        preprocess(make(), SIZE)
    assert isinstance(info.value, ValueError)  # callers may catch ValueError
    assert info.value.reason


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_files_raise_the_right_error(name: str, tmp_path: Path) -> None:
    make, error = BAD_INPUTS[name]
    path = images.write(tmp_path / "bad.jpg", make())
    with pytest.raises(error):
        preprocess(path, SIZE)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_view_raises_as_its_bytes_do(name: str) -> None:
    make, error = BAD_INPUTS[name]
    with pytest.raises(error):
        preprocess(memoryview(b"x" + make())[1:], SIZE)


def test_too_many_pixels_is_refused_from_the_header() -> None:
    # 5000x5000 declared, almost no pixel data: decoding would fail as corrupt,
    # so ImageTooLargeError proves the limit is checked before decoding.
    header_only = images.png_header_only_bytes(5000, 5000)
    with pytest.raises(CorruptImageError):
        load_image(header_only, SIZE)
    with pytest.raises(ImageTooLargeError, match="25000000"):
        load_image(header_only, SIZE, max_pixels=1_000_000)


def test_max_pixels_boundary() -> None:
    data = images.jpeg_bytes((100, 50))
    assert load_image(data, SIZE, max_pixels=5000).shape == (*SIZE, 3)
    with pytest.raises(ImageTooLargeError):
        load_image(data, SIZE, max_pixels=4999)


@pytest.mark.parametrize("side", [10_000, 50_000])  # over Pillow's limit, and over twice it
def test_decompression_bomb_is_too_large_even_without_a_limit(side: int) -> None:
    assert side * side > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageTooLargeError, match=f"exceeds the limit of {DEFAULT_MAX_PIXELS}$"):
        load_image(images.png_header_only_bytes(side, side), SIZE)


def test_big_jpeg_reduced_decoding_matches_a_full_decode() -> None:
    photo = images.noisy((1200, 900), noise=10).resize((1200, 900))
    data = images.jpeg_bytes(image=photo)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = np.asarray(full.resize((224, 224), Image.Resampling.BILINEAR))
    got = load_image(data, (224, 224))
    assert got.shape == (224, 224, 3)
    assert np.abs(got.astype(int) - reference).mean() < 3


def test_the_gate_sees_the_pixels_actually_decoded() -> None:
    calls: list[int] = []

    def gate(pixels: int) -> contextlib.AbstractContextManager[object]:
        calls.append(pixels)
        return contextlib.nullcontext()

    photo = images.noisy((1200, 900), noise=10)
    load_image(images.jpeg_bytes(image=photo), (224, 224), gate=gate)
    load_image(images.encode(photo, "PNG"), (224, 224), gate=gate)
    # The JPEG decodes at 1/4 scale (300x225 >= 224); the PNG at full size.
    assert calls == [300 * 225, 1200 * 900]


def open_files_named(path: Path) -> int:
    """How many file descriptors of this process point at ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += Path(os.readlink(fd)) == path
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_refused_file_is_closed_at_once(tmp_path: Path) -> None:
    path = images.write(tmp_path / "big.jpg", images.jpeg_bytes((100, 50))).resolve()
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path, SIZE, max_pixels=10)
    # The traceback still holds the frames: the file must have been closed explicitly.
    assert info.value.reason
    assert open_files_named(path) == 0


# ---------------------------------------------------------------- cost bounded by bytes sent


def jpeg_claiming(size: tuple[int, int]) -> bytes:
    """A real 200x200 JPEG whose frame header was patched to claim ``size``."""
    data = bytearray(images.jpeg_bytes((200, 200)))
    at = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), height, width
    data[at : at + 4] = struct.pack(">HH", size[1], size[0])
    return bytes(data)


def test_a_small_file_claiming_many_pixels_is_refused_before_decoding() -> None:
    calls: list[int] = []

    def gate(pixels: int) -> contextlib.AbstractContextManager[object]:
        calls.append(pixels)
        return contextlib.nullcontext()

    for data in (crafted.png_header_only(7000, 7000), jpeg_claiming((7000, 7000))):
        with pytest.raises(CorruptImageError, match="more than 1024 pixels per byte"):
            load_image(data, SIZE, max_pixels=50_000_000, gate=gate)
    assert calls == []  # nothing was decoded


def test_the_pixels_per_byte_bound_is_exact() -> None:
    data = crafted.png_header_only(2000, 2000)
    per_byte = -(-2000 * 2000 // len(data))  # the smallest bound that lets it open
    with Image.open(io.BytesIO(data)):
        pass
    with pytest.raises(CorruptImageError, match=f"more than {per_byte - 1} pixels per byte"):
        load_image(data, SIZE, max_pixels_per_byte=per_byte - 1)
    with pytest.raises(CorruptImageError, match="truncated PNG"):  # opened, then found short
        load_image(data, SIZE, max_pixels_per_byte=per_byte)


def test_any_file_may_claim_a_megapixel() -> None:
    side = int(FREE_PIXELS**0.5)
    assert load_image(crafted.white_png(side, side), SIZE).min() == 255


def test_the_default_bound_passes_photos_screenshots_and_blank_pages() -> None:
    assert DEFAULT_MAX_PIXELS_PER_BYTE == 1024
    blank = Image.new("RGB", (1920, 1080), "white")
    for data in (
        images.encode(blank, "PNG"),
        images.encode(blank, "GIF"),
        images.encode(blank, "JPEG"),
        images.jpeg_bytes((3000, 2000)),
    ):
        assert load_image(data, SIZE).shape == (*SIZE, 3)


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (33, 17), (1000, 3)])
def test_a_png_with_every_row_decodes(size: tuple[int, int], interlace: int) -> None:
    data = crafted.white_png(*size, interlace=interlace)
    assert load_image(data, SIZE).min() == 255


@pytest.mark.parametrize("interlace", [0, 1])
def test_a_png_whose_stream_ends_early_is_refused(interlace: int) -> None:
    rows = 2000 * 2001  # each row: a filter byte and 2000 samples
    data = crafted.white_png(2000, 2000, interlace=interlace, missing=rows // 2)
    if not interlace:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # Pillow fills the missing rows with black without a word
    with pytest.raises(CorruptImageError, match="a truncated PNG file: its data fills (49|50)%"):
        load_image(data, SIZE, max_pixels_per_byte=None)


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("missing", [1, 500])
def test_a_png_a_few_bytes_short_is_refused(interlace: int, missing: int) -> None:
    with pytest.raises(CorruptImageError, match="truncated"):
        load_image(crafted.white_png(40, 30, interlace=interlace, missing=missing), SIZE)


def test_a_truncated_png_is_refused_from_a_path_too(tmp_path: Path) -> None:
    path = tmp_path / "short.png"
    path.write_bytes(crafted.white_png(40, 30, missing=40))
    with pytest.raises(CorruptImageError, match="truncated PNG"):
        load_image(path, SIZE)
