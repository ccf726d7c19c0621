"""``training.prepare``: both Kaggle layouts, skipped files, determinism, duplicates."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests import images
from training.__main__ import main
from training.prepare import MANIFEST_FILE, SPLITS, prepare

CLASSES = ("cat", "dog")


def files_in(dest: Path) -> dict[str, dict[str, list[str]]]:
    """File names found on disk: split -> class -> sorted names."""
    return {
        split: {name: sorted(p.name for p in (dest / split / name).iterdir()) for name in CLASSES}
        for split in SPLITS
    }


def split_of_source(manifest: dict) -> dict[str, str]:
    """Source file (relative to the source folder) -> the split it was copied to."""
    return {f["source"]: f["split"] for f in manifest["files"]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_flat_layout_is_split_80_10_10_per_class(tmp_path: Path) -> None:
    source = tmp_path / "train"
    images.write_raw_flat(source, per_class=50)
    dest = tmp_path / "split"

    manifest = prepare(source, dest, seed=1)

    expected = {"train": 40, "validation": 5, "test": 5}
    assert manifest["counts"] == {s: dict.fromkeys(CLASSES, n) for s, n in expected.items()}
    assert manifest["total"] == 100
    assert manifest["skipped"] == []
    on_disk = files_in(dest)
    for split, count in expected.items():
        for name in CLASSES:
            assert len(on_disk[split][name]) == count
            # The label comes from the file name: cat.N.jpg files are cats.
            assert all(f.startswith(f"{name}.") for f in on_disk[split][name])
    # Every source file was copied exactly once, byte for byte.
    copied = sorted(p for p in dest.rglob("*.jpg"))
    assert len(copied) == 100
    assert sorted(sha256(p) for p in copied) == sorted(sha256(p) for p in source.iterdir())


def test_class_folder_layout_petimages(tmp_path: Path) -> None:
    source = tmp_path / "PetImages"
    images.write_raw_class_folders(source, per_class=50)
    dest = tmp_path / "split"

    manifest = prepare(source, dest, seed=1)

    for split, count in {"train": 40, "validation": 5, "test": 5}.items():
        for name in CLASSES:
            assert len(list((dest / split / name).iterdir())) == count
    # Files from Cat/ are cats and files from Dog/ are dogs.
    for entry in manifest["files"]:
        assert entry["source"].split("/")[0] == entry["class"].capitalize()
        assert entry["file"].startswith(f"{entry['split']}/{entry['class']}/")
        assert sha256(dest / entry["file"]) == sha256(source / entry["source"])


def test_uneven_classes_are_stratified(tmp_path: Path) -> None:
    source = tmp_path / "PetImages"
    for i in range(30):
        images.write(source / "Cat" / f"{i}.jpg", images.pet_jpeg_bytes("cat", seed=i))
    for i in range(10):
        images.write(source / "Dog" / f"{i}.jpg", images.pet_jpeg_bytes("dog", seed=500 + i))

    manifest = prepare(source, tmp_path / "split", seed=3)

    assert manifest["counts"]["train"] == {"cat": 24, "dog": 8}
    assert manifest["counts"]["validation"] == {"cat": 3, "dog": 1}
    assert manifest["counts"]["test"] == {"cat": 3, "dog": 1}


BAD_FILES = {
    # name in Cat/ -> (bytes, expected words in the reason)
    "Thumbs.db": (images.text_bytes("\x00\x01thumbnail cache"), "not a recognised image"),
    "666.jpg": (images.EMPTY, "empty"),
    "truncated.jpg": (images.truncated_jpeg_bytes(), "truncated"),
    "notes.jpg": (images.text_bytes(), "not a recognised image"),
}


def make_source_with_bad_files(root: Path) -> Path:
    source = root / "PetImages"
    images.write_raw_class_folders(source, per_class=10)
    for name, (data, _) in BAD_FILES.items():
        images.write(source / "Cat" / name, data)
    images.write(source / "Dog" / "broken.jpg", images.truncated_jpeg_bytes(keep=0.3))
    return source


def test_bad_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    source = make_source_with_bad_files(tmp_path)
    dest = tmp_path / "split"

    manifest = prepare(source, dest, seed=0)

    skipped = {s["file"]: s for s in manifest["skipped"]}
    assert set(skipped) == {f"Cat/{n}" for n in BAD_FILES} | {"Dog/broken.jpg"}
    for name, (_, words) in BAD_FILES.items():
        assert words in skipped[f"Cat/{name}"]["reason"]
        assert skipped[f"Cat/{name}"]["class"] == "cat"
    assert skipped["Dog/broken.jpg"]["reason"]
    # Nothing bad was copied; every good file was.
    copied = [p for p in dest.rglob("*") if p.is_file() and p.name != MANIFEST_FILE]
    assert {p.name for p in copied}.isdisjoint({*BAD_FILES, "broken.jpg"})
    assert manifest["total"] == 20 == len(copied)
    # The manifest on disk is the one returned.
    assert json.loads((dest / MANIFEST_FILE).read_text()) == manifest


def test_cli_prepare_reports_skipped_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source_with_bad_files(tmp_path)
    dest = tmp_path / "split"

    code = main(["prepare", "--source", str(source), "--dest", str(dest), "--seed", "0"])

    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 5" in out
    for name, (_, words) in BAD_FILES.items():
        line = next(line for line in out.splitlines() if f"skipped Cat/{name}:" in line)
        assert words in line
    assert "skipped Dog/broken.jpg:" in out
    assert str(dest / MANIFEST_FILE) in out
    assert (dest / MANIFEST_FILE).is_file()


def test_flat_layout_bad_files_are_skipped_and_strays_ignored(tmp_path: Path) -> None:
    source = tmp_path / "train"
    images.write_raw_flat(source, per_class=10)
    images.write(source / "cat.100.jpg", images.EMPTY)
    images.write(source / "dog.100.jpg", images.text_bytes())
    images.write(source / "cat.101.jpg", images.truncated_jpeg_bytes())
    images.write(source / "Thumbs.db", images.text_bytes())  # no class in its name
    dest = tmp_path / "split"

    manifest = prepare(source, dest, seed=0)

    skipped = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"cat.100.jpg", "dog.100.jpg", "cat.101.jpg"}
    assert skipped["cat.100.jpg"] == "empty file"
    assert "not a recognised image" in skipped["dog.100.jpg"]
    assert "truncated" in skipped["cat.101.jpg"]
    copied = {p.name for p in dest.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    assert len(copied) == manifest["total"] == 20
    assert copied.isdisjoint({*skipped, "Thumbs.db"})


def test_same_seed_same_split_and_file_order_does_not_matter(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    images.write_raw_flat(source, per_class=20)
    # The same pictures under other names (so sorted order differs), written in reverse.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for path in sorted(source.iterdir(), reverse=True):
        label, number, ext = path.name.split(".")
        shutil.copyfile(path, renamed / f"{label}.{(int(number) * 7) % 20 + 100}.{ext}")

    first = prepare(source, tmp_path / "a", seed=5)
    second = prepare(source, tmp_path / "b", seed=5)
    reordered = prepare(renamed, tmp_path / "c", seed=5)
    other_seed = prepare(source, tmp_path / "d", seed=6)

    assert first["fingerprint"] == second["fingerprint"]
    assert split_of_source(first) == split_of_source(second)
    assert files_in(tmp_path / "a") == files_in(tmp_path / "b")
    # Content decides the split, not names or listing order.
    assert reordered["fingerprint"] == first["fingerprint"]
    by_hash = {f["sha256"]: f["split"] for f in first["files"]}
    assert {f["sha256"]: f["split"] for f in reordered["files"]} == by_hash
    # Another seed gives another split (with the same counts).
    assert other_seed["fingerprint"] != first["fingerprint"]
    assert split_of_source(other_seed) != split_of_source(first)
    assert other_seed["counts"] == first["counts"]


def test_duplicates_never_span_two_splits(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    images.write_raw_flat(source, per_class=20)
    copies = {  # original -> extra names with identical bytes
        "cat.0.jpg": ["cat.100.jpg", "cat.101.jpg"],
        "cat.5.jpg": ["cat.102.jpg", "cat.103.jpg"],
        "cat.9.jpg": ["cat.104.jpg"],
        "dog.1.jpg": ["dog.100.jpg", "dog.101.jpg"],
        "dog.7.jpg": ["dog.102.jpg", "dog.103.jpg"],
        "dog.13.jpg": ["dog.104.jpg", "dog.105.jpg", "dog.106.jpg"],
    }
    for original, names in copies.items():
        for name in names:
            shutil.copyfile(source / original, source / name)
    dest = tmp_path / "split"

    manifest = prepare(source, dest, seed=11)

    splits_by_hash: dict[str, set[str]] = {}
    for path in dest.rglob("*.jpg"):
        split = path.relative_to(dest).parts[0]
        splits_by_hash.setdefault(sha256(path), set()).add(split)
    assert all(len(splits) == 1 for splits in splits_by_hash.values())
    # All copies are kept (within one split) and reported as groups.
    assert manifest["total"] == 40 + sum(len(n) for n in copies.values())
    assert len(list(dest.rglob("*.jpg"))) == manifest["total"]
    assert manifest["duplicate_groups"] == sorted(sorted([o, *n]) for o, n in copies.items())
    assert manifest["skipped"] == []


def test_same_bytes_as_cat_and_dog_is_skipped(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    images.write_raw_flat(source, per_class=10)
    shutil.copyfile(source / "cat.3.jpg", source / "dog.99.jpg")

    manifest = prepare(source, tmp_path / "split", seed=0)

    skipped = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"cat.3.jpg", "dog.99.jpg"}
    assert all("more than one class" in r for r in skipped.values())
    assert manifest["total"] == 19  # 21 files, the conflicting pair left out


def test_folder_with_neither_layout_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "download"
    images.write(source / "PetImages" / "Cat" / "1.jpg", images.pet_jpeg_bytes("cat"))
    images.write(source / "readme.txt", images.text_bytes())
    images.write(source / "bird.1.jpg", images.pet_jpeg_bytes("cat"))

    with pytest.raises(ValueError, match="neither") as info:
        prepare(source, tmp_path / "split")
    assert "PetImages" in str(info.value)  # the hint names the subfolder to point at
    assert not (tmp_path / "split").exists()

    code = main(["prepare", "--source", str(source), "--dest", str(tmp_path / "split")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error:") and "neither" in captured.err


def test_non_empty_dest_needs_force(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    images.write_raw_flat(source, per_class=10)
    dest = tmp_path / "split"
    images.write(dest / "stale.txt", b"old")

    with pytest.raises(ValueError, match="--force"):
        prepare(source, dest)
    manifest = prepare(source, dest, force=True)
    assert not (dest / "stale.txt").exists()
    assert manifest["total"] == 20


def test_files_photo_tools_keep_are_not_photos(tmp_path: Path) -> None:
    source = tmp_path / "PetImages"
    images.write_raw_class_folders(source, 10)
    for tool in (".thumbnails/0.jpg", "@eaDir/0.jpg/SYNOPHOTO_THUMB_XL.jpg", "._0.jpg"):
        images.write(source / "Cat" / tool, images.pet_jpeg_bytes("dog", seed=99))

    manifest = prepare(source, tmp_path / "split")

    copied = [p for p in (tmp_path / "split").rglob("*.jpg")]
    assert len(copied) == 20 and not manifest["skipped"]
