"""Which formats are decoded, and that no pixel is decoded before the size is checked.

Issue 12, items 1, 2 and 6c. Two spies make "before any decoder runs" testable:
``foreign_plugins`` records every call into a Pillow plugin for a format we do not
accept, ``pixel_allocations`` every pixel buffer Pillow allocates (``core.new``,
``core.fill``) and every WebP decoder created. A refused file must leave both empty.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile, features

from catdog.preprocessing import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    load_image,
    open_image,
    preprocess,
)
from tests import images
from tests.catdog import crafted

SIZE = (24, 40)
ACCEPTED_TEXT = "accepted: JPEG, PNG, GIF, WebP, BMP"
LIMIT = 1_000_000  # the max_pixels of the size tests; every crafted header declares more


# ---------------------------------------------------------------- spies


@pytest.fixture
def foreign_plugins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Formats (not accepted) whose Pillow plugin was asked to open a file, in call order."""
    Image.init()
    calls: list[str] = []

    def spy(fmt: str, factory: Callable[..., ImageFile.ImageFile]) -> Callable[..., object]:
        def opened(*args: object) -> ImageFile.ImageFile:
            calls.append(fmt)
            return factory(*args)

        return opened

    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in ACCEPTED_FORMATS:
            monkeypatch.setitem(Image.OPEN, fmt, (spy(fmt, factory), accept))
    return calls


class Allocations:
    """Pixel buffers Pillow allocates, and WebP decoders created (they allocate a canvas),
    while ``watching()``: crafting the test's own files is not counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self._on = False

    def record(self, kind: str, what: object) -> None:
        if self._on:
            self.calls.append((kind, what))

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[tuple[str, object]]]:
        self._on = True
        try:
            yield self.calls
        finally:
            self._on = False


@pytest.fixture
def pixel_allocations(monkeypatch: pytest.MonkeyPatch) -> Allocations:
    """Spy on ``Image.core.new``/``fill`` and ``_webp.WebPAnimDecoder``."""
    spy = Allocations()

    def spying(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def allocate(mode: str, size: object, *rest: object) -> object:
            spy.record(name, size)
            return real(mode, size, *rest)

        return allocate

    for name in ("new", "fill"):
        monkeypatch.setattr(Image.core, name, spying(name, getattr(Image.core, name)))
    if features.check("webp"):
        from PIL import _webp

        real_decoder = _webp.WebPAnimDecoder

        def decoder(data: bytes) -> object:
            spy.record("WebPAnimDecoder", len(data))
            return real_decoder(data)

        monkeypatch.setattr(_webp, "WebPAnimDecoder", decoder)
    return spy


# ---------------------------------------------------------------- item 1: the allow-list


def _encoded(fmt: str, **options: object) -> Callable[[], bytes]:
    return lambda: images.encode(images.solid((16, 16)), fmt, **options)


#: name -> (bytes factory, the format the refusal names, or None if Pillow cannot tell)
REFUSED: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "eps-looping": (lambda: crafted.LOOPING_EPS, "EPS"),
    "tiff": (images.tiff_bytes, "TIFF"),
    "psd": (crafted.psd_bytes, "PSD"),
    "ico-embedding-png": (lambda: crafted.ico_embedding(crafted.solid_png(1200)), "ICO"),
    "ico": (_encoded("ICO"), "ICO"),
    "dds-unknown-pixel-format": (images.dds_unknown_format_bytes, "DDS"),
    "heic": (crafted.heic_like_bytes, "HEIC"),
    "pdf": (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", None),
    # formats Pillow only identifies (stub plugins: it cannot write them), by their headers
    "bufr": (lambda: b"BUFR" + bytes(60), "BUFR"),
    "grib": (lambda: b"GRIB\x00\x00\x40\x01" + bytes(60), "GRIB"),  # edition 1
    "hdf5": (lambda: b"\x89HDF\r\n\x1a\n" + bytes(60), "HDF5"),
    "wmf": (lambda: b"\xd7\xcd\xc6\x9a\x00\x00" + bytes(60), "WMF"),  # placeable WMF
}
STUBS = {"BUFR", "GRIB", "HDF5", "WMF"}  # refused above, by a crafted header
if features.check("jpg_2000"):
    REFUSED["jpeg2000"] = (_encoded("JPEG2000"), "JPEG2000")
    REFUSED["jpeg2000-codestream"] = (_encoded("JPEG2000", no_jp2=True), "JPEG2000")
if features.check("avif"):
    REFUSED["avif"] = (_encoded("AVIF"), "AVIF")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_formats_are_refused_before_any_decoder_runs(
    name: str, foreign_plugins: list[str], pixel_allocations: Allocations
) -> None:
    make, fmt = REFUSED[name]
    data = make()
    with pixel_allocations.watching(), pytest.raises(NotAnImageError) as info:
        load_image(data, SIZE, max_pixels=LIMIT)
    reason = info.value.reason
    if fmt is None:
        assert reason == f"not a recognised image format; {ACCEPTED_TEXT}"
    else:
        assert reason == f"unsupported image format {fmt}; {ACCEPTED_TEXT}"
    assert foreign_plugins == []  # no plugin of another format even looked at it
    assert pixel_allocations.calls == []


def _stub_formats() -> set[str]:
    """Formats Pillow identifies but cannot decode or write without an outside handler."""
    Image.init()
    return {
        fmt
        for fmt, (factory, _) in Image.OPEN.items()
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
    }


def _writable_foreign_formats() -> list[str]:
    Image.init()
    return sorted(set(Image.SAVE) & set(Image.OPEN) - set(ACCEPTED_FORMATS) - _stub_formats())


def test_every_stub_format_has_a_crafted_refusal_case() -> None:
    assert _stub_formats() - set(ACCEPTED_FORMATS) == STUBS


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # writing IM
@pytest.mark.parametrize("fmt", _writable_foreign_formats())
def test_every_other_format_pillow_writes_is_refused(fmt: str, foreign_plugins: list[str]) -> None:
    data = None
    for mode in ("RGB", "L", "P", "1", "F"):
        try:
            data = images.encode(images.solid((16, 16), mode=mode), fmt)
            break
        except Exception:  # this mode cannot be written in this format; try the next
            continue
    assert data is not None, f"Pillow could not write a small {fmt}"
    with pytest.raises(NotAnImageError) as info:
        load_image(data, SIZE)
    assert info.value.reason.endswith(ACCEPTED_TEXT)
    assert foreign_plugins == []


def test_a_refused_file_on_disk_is_refused_whatever_its_name(
    tmp_path: Path, foreign_plugins: list[str]
) -> None:
    path = images.write(tmp_path / "cat.1.jpg", crafted.LOOPING_EPS)
    with pytest.raises(NotAnImageError, match="unsupported image format EPS"):
        preprocess(path, SIZE)
    assert foreign_plugins == []


def test_the_default_is_what_the_readme_promises() -> None:
    assert tuple(ACCEPTED_FORMATS) == ("JPEG", "PNG", "GIF", "WEBP", "BMP")


@pytest.mark.parametrize(
    "data",
    [images.jpeg_bytes(), images.png_rgba_bytes(alpha=255), images.gif_bytes()]
    + [images.webp_bytes(), images.bmp_bytes()],
    ids=["jpeg", "png", "gif", "webp", "bmp"],
)
def test_each_accepted_format_is_decoded(data: bytes) -> None:
    assert load_image(data, SIZE).shape == (*SIZE, 3)


def test_the_allow_list_is_a_parameter() -> None:
    png = images.png_rgba_bytes(alpha=255)
    jpeg = images.jpeg_bytes()
    with pytest.raises(NotAnImageError) as info:
        preprocess(png, SIZE, formats=("JPEG",))
    assert info.value.reason == "unsupported image format PNG; accepted: JPEG"
    assert preprocess(jpeg, SIZE, formats=["jpeg"]).shape == (*SIZE, 3)  # any case
    assert load_image(png, SIZE, formats={"PNG", "WebP"}).shape == (*SIZE, 3)
    with open_image(jpeg, formats=("JPEG", "PNG")) as image:
        assert image.format == "JPEG"
    # A damaged file of a format not allowed is unsupported, not corrupt.
    with pytest.raises(NotAnImageError):
        load_image(images.truncated_jpeg_bytes(), SIZE, formats=("PNG",))
    with pytest.raises(CorruptImageError):
        load_image(images.truncated_jpeg_bytes(), SIZE, formats=("JPEG",))


@pytest.mark.parametrize("formats", [("EPS",), ("JPEG", "TIFF"), ("ICO",), ("NOPE",), ()], ids=str)
def test_only_formats_known_to_read_headers_first_can_be_allowed(
    formats: tuple[str, ...],
) -> None:
    with pytest.raises(ValueError, match="JPEG, PNG, GIF, WebP, BMP") as info:
        load_image(images.jpeg_bytes(), SIZE, formats=formats)
    assert not isinstance(info.value, NotAnImageError)  # a caller's mistake, not the file's


def test_training_prepare_skips_a_refused_file_with_its_reason(tmp_path: Path) -> None:
    from training.prepare import Candidate, check_file

    eps = images.write(tmp_path / "cat.1.jpg", crafted.LOOPING_EPS)
    tiff = images.write(tmp_path / "cat.2.jpg", images.tiff_bytes())
    good = images.write(tmp_path / "cat.3.jpg", images.jpeg_bytes())
    assert check_file(Candidate(eps, "cat")).reason == (
        f"unsupported image format EPS; {ACCEPTED_TEXT}"
    )
    assert check_file(Candidate(tiff, "cat")).reason == (
        f"unsupported image format TIFF; {ACCEPTED_TEXT}"
    )
    assert check_file(Candidate(good, "cat")).reason is None


# ---------------------------------------------------------------- item 2: size before pixels

W, H = 3000, 2000  # 6 MP declared, over LIMIT; small enough to allocate if a bug lets it

#: Every accepted format and its variants, each declaring W x H (BMP OS/2: 16-bit sizes).
OVERSIZED: dict[str, Callable[[], bytes]] = {
    "png-rgb": lambda: crafted.png_header_only(W, H),
    "png-palette": lambda: crafted.png_header_only(
        W, H, color_type=3, extra=crafted.png_chunk(b"PLTE", bytes(6))
    ),
    "png-16bit-gray": lambda: crafted.png_header_only(W, H, color_type=0, bit_depth=16),
    "png-interlaced": lambda: crafted.png_header_only(W, H, interlace=1),
    "png-animated": lambda: crafted.apng_header_only(W, H),
    "jpeg-baseline": lambda: crafted.jpeg_declaring((W, H)),
    "jpeg-progressive": lambda: crafted.jpeg_declaring(
        (W, H), images.jpeg_bytes((16, 16), progressive=True)
    ),
    "jpeg-cmyk": lambda: crafted.jpeg_declaring((W, H), images.jpeg_cmyk_bytes((16, 16))),
    "mpo": lambda: crafted.mpo_declaring((W, H)),
    "gif": lambda: crafted.gif_bytes((W, H)),
    "gif-animated": lambda: crafted.gif_bytes((W, H), frames=3),
    "gif-small-screen-big-frame": lambda: crafted.gif_bytes((16, 16), (0, 0, W, H)),
    "gif-frame-far-off-screen": lambda: crafted.gif_bytes((16, 16), (W - 1, H - 1, 1, 1)),
    "gif-dispose-to-background": lambda: crafted.gif_bytes((W, H), disposal=2),
    "gif-animated-dispose": lambda: crafted.gif_bytes((W, H), disposal=2, frames=3),
    "gif-dispose-behind-comment-and-junk": lambda: crafted.gif_bytes(
        (16, 16), (0, 0, W, H), disposal=2, before_frames=crafted.GIF_COMMENT_AND_JUNK
    ),
    "webp-lossy": lambda: crafted.webp_declaring((W, H), "lossy"),
    "webp-lossless": lambda: crafted.webp_declaring((W, H), "lossless"),
    "webp-animated": lambda: crafted.webp_declaring((W, H), "animated"),
    "bmp-24bit": lambda: crafted.bmp_bytes(W, H),
    "bmp-top-down": lambda: crafted.bmp_bytes(W, -H),
    "bmp-1bit": lambda: crafted.bmp_bytes(W, H, bits=1),
    "bmp-8bit-palette": lambda: crafted.bmp_bytes(W, H, bits=8),
    "bmp-rle8": lambda: crafted.bmp_bytes(W, H, bits=8, compression=1),
    "bmp-rle4": lambda: crafted.bmp_bytes(W, H, bits=4, compression=2),
    "bmp-32bit-bitfields": lambda: crafted.bmp_bytes(
        W, H, bits=32, compression=3, masks=(0xFF0000, 0xFF00, 0xFF)
    ),
    "bmp-v5-header": lambda: crafted.bmp_bytes(W, H, bits=24, header_size=124),
    "bmp-os2": lambda: crafted.bmp_bytes(W, H, header_size=12),
}


@pytest.mark.parametrize("name", sorted(OVERSIZED))
def test_size_is_checked_before_any_pixel_is_decoded(
    name: str, pixel_allocations: Allocations
) -> None:
    data = OVERSIZED[name]()
    with pixel_allocations.watching(), pytest.raises(ImageTooLargeError) as info:
        load_image(data, SIZE, max_pixels=LIMIT)
    assert info.value.reason == f"{W}x{H} = {W * H} pixels exceeds the limit of {LIMIT}"
    assert pixel_allocations.calls == []


@pytest.mark.parametrize("name", sorted(OVERSIZED))
def test_the_crafted_headers_are_read_as_declared(name: str) -> None:
    # The size test is only meaningful if Pillow itself reads W x H from these files.
    with Image.open(io.BytesIO(OVERSIZED[name]())) as image:
        image.seek(0)
        assert image.size == (W, H)


def test_the_allocation_spy_sees_a_decode(pixel_allocations: Allocations) -> None:
    gif, webp = images.gif_bytes((20, 10)), images.webp_bytes((20, 10))
    with pixel_allocations.watching() as calls:
        load_image(gif, SIZE)
        load_image(webp, SIZE)
    assert ("new", (20, 10)) in calls
    assert any(kind == "WebPAnimDecoder" for kind, _ in calls)


def test_an_icon_hiding_a_big_png_is_refused_unread(
    foreign_plugins: list[str], pixel_allocations: Allocations
) -> None:
    # The recipe, 1200^2 instead of 13000^2: Pillow's ICO plugin decodes the
    # embedded PNG inside Image.open, whatever the directory says (1x1 here).
    icon = crafted.ico_embedding(crafted.solid_png(1200))
    with pixel_allocations.watching(), pytest.raises(NotAnImageError) as info:
        load_image(icon, SIZE, max_pixels=LIMIT)
    assert info.value.reason == f"unsupported image format ICO; {ACCEPTED_TEXT}"
    assert foreign_plugins == [] and pixel_allocations.calls == []


@pytest.mark.parametrize(("frames", "disposal"), [(1, 0), (3, 0), (1, 2), (3, 2), (3, 3)])
@pytest.mark.parametrize("before", [b"", crafted.GIF_COMMENT_AND_JUNK], ids=["plain", "junk"])
def test_a_gif_within_the_limit_still_decodes(frames: int, disposal: int, before: bytes) -> None:
    data = crafted.gif_bytes(
        (40, 30), (5, 5, 20, 10), disposal, frames, complete=True, before_frames=before
    )
    assert load_image(data, SIZE, max_pixels=40 * 30).shape == (*SIZE, 3)
    with pytest.raises(ImageTooLargeError):
        load_image(data, SIZE, max_pixels=40 * 30 - 1)


def test_an_animated_webp_within_the_limit_still_decodes() -> None:
    data = images.encode(
        images.solid((20, 10)), "WEBP", save_all=True, append_images=[images.solid((20, 10))]
    )
    assert load_image(data, SIZE, max_pixels=200).shape == (*SIZE, 3)
    with pytest.raises(ImageTooLargeError, match="20x10 = 200 pixels exceeds the limit of 199"):
        load_image(data, SIZE, max_pixels=199)


# ---------------------------------------------------------------- item 6c: our limit, not Pillow's

BIG = 14_000  # 196 MP: over Pillow's own refusal threshold (2 x 89,478,485)

OVER_PILLOWS_LIMIT: dict[str, Callable[[], bytes]] = {
    "png": lambda: crafted.png_header_only(BIG, BIG),
    "bmp": lambda: crafted.bmp_bytes(BIG, BIG),
    "jpeg": lambda: crafted.jpeg_declaring((BIG, BIG)),
    "gif": lambda: crafted.gif_bytes((BIG, BIG)),
    "webp": lambda: crafted.webp_declaring((BIG, BIG), "lossless"),
    "mpo": lambda: crafted.mpo_declaring((BIG, BIG)),
}


@pytest.mark.parametrize("name", sorted(OVER_PILLOWS_LIMIT))
@pytest.mark.parametrize("limit", [50_000_000, None])
def test_a_huge_image_names_our_limit_not_pillows(name: str, limit: int | None) -> None:
    with pytest.raises(ImageTooLargeError) as info:
        load_image(OVER_PILLOWS_LIMIT[name](), SIZE, max_pixels=limit)
    ours = DEFAULT_MAX_PIXELS if limit is None else limit
    assert info.value.reason == (f"{BIG}x{BIG} = {BIG * BIG} pixels exceeds the limit of {ours}")
    assert str(2 * 89_478_485) not in info.value.reason


@pytest.mark.parametrize("name", ["png", "bmp", "jpeg", "gif"])
def test_a_limit_above_pillows_is_honoured(name: str) -> None:
    # Opening is lazy: nothing is decoded, the caller's 200 MP limit is what counts.
    with open_image(
        OVER_PILLOWS_LIMIT[name](), max_pixels=200_000_000, max_pixels_per_byte=None
    ) as image:
        assert image.size == (BIG, BIG)
    with pytest.raises(ImageTooLargeError, match=f"the limit of {BIG * BIG - 1}$"):
        open_image(OVER_PILLOWS_LIMIT[name](), max_pixels=BIG * BIG - 1)


def test_the_default_limit_is_pillows_default() -> None:
    assert DEFAULT_MAX_PIXELS == 89_478_485
