"""The robustness suite: each transform does what its name says; the suite reports them all.

* Letterboxing puts the photo between black bars; crops have the asked aspect;
  down-up keeps the size; rotation leaves black corners; JPEG q30 is smaller.
* ``original`` feeds the file unchanged.
* ``run_suite`` on the tiny model gives a report per transform, and the
  table has a row for each and columns per model and class.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests import images
from tests.images import MakeSplit
from training.robustness import (
    TRANSFORMS,
    centre_crop,
    down_up,
    format_table,
    letterbox,
    rotate,
    run_suite,
    transformed_bytes,
)


def test_letterbox_centres_the_photo_between_black_bars() -> None:
    out = np.asarray(letterbox(images.solid((200, 200), images.RED)))
    assert out.shape == (320, 480, 3)
    assert out[:, :70].max() == 0 and out[:, -70:].max() == 0
    assert tuple(out[160, 240]) == images.RED


def test_crops_have_the_asked_aspect() -> None:
    photo = images.solid((200, 200))
    assert centre_crop(photo, 3 / 2).size == (200, 133)
    assert centre_crop(photo, 4 / 3).size == (200, 150)
    assert centre_crop(images.solid((300, 100)), 4 / 3).size == (133, 100)


def test_down_up_keeps_the_size_and_rotation_blackens_corners() -> None:
    photo = images.solid((90, 60), images.BLUE)
    assert down_up(photo).size == (90, 60)
    turned = np.asarray(rotate(photo, 15))
    assert turned[0, 0].max() == 0 and tuple(turned[30, 45]) == images.BLUE


def test_original_is_the_file_and_low_quality_jpeg_is_smaller(tmp_path: Path) -> None:
    path = images.write(tmp_path / "cat.jpg", images.jpeg_bytes((120, 100)))
    assert transformed_bytes(path, "original") == path.read_bytes()
    path = images.write(tmp_path / "noisy.png", images.encode(images.noisy((120, 100)), "PNG"))
    assert len(transformed_bytes(path, "jpeg q30")) < len(transformed_bytes(path, "crop 4:3"))
    with Image.open(io.BytesIO(transformed_bytes(path, "letterbox 480x320"))) as out:
        assert out.size == (480, 320) and out.format == "JPEG"


def test_transforms_see_a_phone_photo_upright_and_transparency_on_white(tmp_path: Path) -> None:
    photo = images.halves((120, 80))  # left red, right blue: a turn would move the colours
    phone = images.write(tmp_path / "phone.jpg", images.exif_rotated_jpeg_bytes(photo, 6))
    flat = images.write(tmp_path / "flat.png", images.encode(photo, "PNG"))
    with Image.open(io.BytesIO(transformed_bytes(phone, "darker x0.6"))) as out:
        turned = np.asarray(out.convert("RGB"), dtype=float)
    with Image.open(io.BytesIO(transformed_bytes(flat, "darker x0.6"))) as out:
        plain = np.asarray(out.convert("RGB"), dtype=float)
    assert turned.shape == plain.shape == (80, 120, 3)
    assert np.abs(turned - plain).mean() < 3  # JPEG noise only
    clear = images.write(tmp_path / "clear.png", images.png_rgba_bytes((40, 40), alpha=0))
    with Image.open(io.BytesIO(transformed_bytes(clear, "crop 4:3"))) as out:
        assert np.asarray(out.convert("RGB")).min() > 240  # white, as the service shows it


def test_suite_reports_every_transform(tiny_model_base: Path, make_split: MakeSplit) -> None:
    split = make_split(per_split=3, size=(48, 40))
    results = run_suite(tiny_model_base / "1", split / "test")
    assert list(results) == list(TRANSFORMS)
    for report in results.values():
        assert report["count"] == 6 and 0 <= report["accuracy"] <= 1
    assert results["original"]["accuracy"] == 1.0  # the tiny model tells red from blue
    table = format_table({"v1": results, "v1 again": results})
    assert all(f"| {name} |" in table for name in TRANSFORMS)
    assert "v1 cat" in table and "v1 again dog" in table


def test_limit_spreads_over_both_classes(tiny_model_base: Path, make_split: MakeSplit) -> None:
    split = make_split(per_split=5)
    results = run_suite(tiny_model_base / "1", split / "test", ["original"], limit=4)
    assert results["original"]["count"] == 4
    assert all(c["count"] == 2 for c in results["original"]["per_class"].values())


def test_cli_writes_the_table_and_includes_earlier_results(
    tiny_model_base: Path, make_split: MakeSplit, tmp_path: Path
) -> None:
    from training.__main__ import main

    split = make_split(per_split=2)
    first = ["--data", str(split / "test"), "--transform", "original"]
    assert (
        main(
            [
                "robustness",
                "--model",
                str(tiny_model_base / "1"),
                *first,
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    earlier = json.loads((tmp_path / "a" / "robustness.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({"old": earlier["v1"]}))
    args = ["--model", str(tiny_model_base / "1"), *first, "--out", str(tmp_path / "b")]
    assert main(["robustness", *args, "--include", str(tmp_path / "old.json")]) == 0
    table = (tmp_path / "b" / "robustness.md").read_text()
    assert table.splitlines()[0].startswith("| transform | old all | old cat | old dog | v1 all")
