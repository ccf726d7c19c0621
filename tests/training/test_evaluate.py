"""``training.evaluate``: per-class numbers on a hand-countable case, and end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from catdog.preprocessing import preprocess
from tests import images
from tests.images import MakeSplit
from training.__main__ import main
from training.data import list_images
from training.evaluate import classification_report, evaluate, format_report
from training.export import load_predictor


def test_report_on_a_case_countable_by_hand() -> None:
    # true:      cat cat cat dog dog
    # predicted: cat dog cat dog dog -> one cat taken for a dog, every dog right.
    report = classification_report([0, 0, 0, 1, 1], [0, 1, 0, 1, 1])

    assert report["count"] == 5
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["confusion_matrix"] == [[2, 1], [0, 2]]
    cat, dog = report["per_class"]["cat"], report["per_class"]["dog"]
    assert (cat["correct"], cat["count"]) == (2, 3)
    assert cat["accuracy"] == pytest.approx(2 / 3)
    assert cat["precision"] == pytest.approx(1.0)
    assert (dog["correct"], dog["count"]) == (2, 2)
    assert dog["accuracy"] == pytest.approx(1.0)
    assert dog["precision"] == pytest.approx(2 / 3)
    assert report["class_names"] == ["cat", "dog"]

    text = format_report(report)
    assert "accuracy 0.8000 on 5 images" in text
    assert "cat    accuracy 0.6667 (2/3)" in text
    assert "dog    accuracy 1.0000 (2/2)" in text


def test_report_with_a_class_never_seen() -> None:
    report = classification_report([0, 0], [0, 1])
    assert report["per_class"]["dog"]["accuracy"] is None
    assert report["per_class"]["dog"]["count"] == 0
    assert report["confusion_matrix"] == [[1, 1], [0, 0]]
    assert "dog    accuracy n/a (0/0)" in format_report(report)


def test_evaluate_end_to_end_matches_a_count_by_hand(
    tiny_model_base: Path, make_split: MakeSplit, tmp_path: Path
) -> None:
    split = make_split(per_split={"test": 5}, seed=7)
    folder = split / "test"
    out = tmp_path / "eval"

    report = evaluate(tiny_model_base, folder, batch_size=4, out_dir=out)

    # Count by hand: predict each file on its own with the shared preprocessing.
    predict, contract = load_predictor(tiny_model_base)
    matrix = np.zeros((2, 2), dtype=int)
    for true, name in enumerate(contract.class_names):
        for path in sorted((folder / name).iterdir()):
            probs = predict(preprocess(path, contract.image_size)[None])
            matrix[true, int(np.argmax(probs))] += 1
    assert report["confusion_matrix"] == matrix.tolist()
    assert report["count"] == 10
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 10)
    for i, name in enumerate(("cat", "dog")):
        assert report["per_class"][name]["count"] == 5
        assert report["per_class"][name]["correct"] == matrix[i, i]

    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["confusion_matrix"] == report["confusion_matrix"]
    assert saved["accuracy"] == pytest.approx(report["accuracy"])
    assert saved["per_class"] == json.loads(json.dumps(report["per_class"]))
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["outputs"] == [str(out / "evaluation.json"), str(out / "confusion.png")]


def test_cli_evaluate_prints_the_report(
    tiny_model_base: Path, make_split: MakeSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_split(per_split={"test": 2})
    out = tmp_path / "eval"

    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_base),
            "--data",
            str(split / "test"),
            "--out",
            str(out),
        ]
    )

    text = capsys.readouterr().out
    assert code == 0
    assert "on 4 images" in text
    assert f"wrote {out / 'evaluation.json'}" in text
    saved = json.loads((out / "evaluation.json").read_text())
    assert f"accuracy {saved['accuracy']:.4f}" in text


def _raw_photos(root: Path, layout: str) -> tuple[Path, list[Path]]:
    """Three cats and three dogs in a raw Kaggle layout, plus files that do not decode
    and files photo tools leave behind. Returns the folder and the undecodable files."""
    if layout == "flat":
        images.write_raw_flat(root, 3, size=(40, 30), seed=3)
        broken = [
            images.write(root / "cat.90.jpg", images.truncated_jpeg_bytes()),
            images.write(root / "dog.91.jpg", b""),
        ]
        images.write(root / "Thumbs.db", b"\x00" * 64)  # no class in its name: not a photo
        images.write(root / "._cat.1.jpg", b"\x00" * 64)  # macOS metadata
        return root, broken
    folder = root / "PetImages"
    images.write_raw_class_folders(folder, 3, size=(40, 30), seed=3)
    # a photo in a sub-folder counts; a thumbnail beside it does not
    nested = folder / "Cat" / "2019" / "0.jpg"
    nested.parent.mkdir()
    (folder / "Cat" / "0.jpg").rename(nested)
    for tool in (".thumbnails/0.jpg", "@eaDir/0.jpg/SYNOPHOTO_THUMB_M.jpg", "._1.jpg"):
        images.write(folder / "Dog" / tool, images.pet_jpeg_bytes("cat"))
    images.write(folder / "__MACOSX" / "Cat" / "._0.jpg", b"\x00" * 64)
    broken = [
        images.write(folder / "Cat" / "90.jpg", images.truncated_jpeg_bytes()),
        images.write(folder / "Dog" / "91.jpg", images.text_bytes()),
        images.write(folder / "Dog" / "Thumbs.db", b"\x00" * 64),
    ]
    return folder, broken


@pytest.mark.parametrize("layout", ["flat", "class folders"])
def test_evaluate_reads_raw_photos_and_lists_the_files_it_left_out(
    tiny_model_base: Path, tmp_path: Path, layout: str
) -> None:
    folder, broken = _raw_photos(tmp_path / "raw", layout)

    report = evaluate(tiny_model_base / "1", folder, batch_size=4, out_dir=tmp_path / "eval")

    assert report["count"] == 6
    assert [c["count"] for c in report["per_class"].values()] == [3, 3]
    assert report["accuracy"] == 1.0  # the tiny model tells the reddish cats from bluish dogs
    assert [s["path"] for s in report["skipped"]] == [str(p) for p in broken]
    assert all(s["reason"] for s in report["skipped"])
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["skipped"] == report["skipped"]
    text = format_report(report)
    assert f"left out {len(broken)} files that do not decode:" in text
    assert f"  {broken[0]}: {report['skipped'][0]['reason']}" in text


def test_a_split_folder_is_read_at_any_depth_and_a_name_that_is_not_utf8_is_left_out(
    tiny_model_base: Path, make_split: MakeSplit, tmp_path: Path
) -> None:
    folder = make_split(per_split={"test": 2}) / "test"
    (folder / "cat" / "2019").mkdir()
    first = sorted((folder / "cat").glob("*.jpg"))[0]
    first.rename(folder / "cat" / "2019" / first.name)
    odd = os.fsdecode(bytes(folder / "dog") + b"/caf\xe9.jpg")
    Path(odd).write_bytes(images.pet_jpeg_bytes("dog"))

    report = evaluate(tiny_model_base / "1", folder, out_dir=tmp_path / "eval")

    assert [c["count"] for c in report["per_class"].values()] == [2, 2]
    assert report["skipped"] == [{"path": odd, "reason": "the file name is not UTF-8"}]
    assert "caf\\xe9.jpg: the file name is not UTF-8" in format_report(report).encode().decode()


def test_one_class_in_two_folders_or_a_class_folder_missing_is_refused(tmp_path: Path) -> None:
    images.write(tmp_path / "a" / "cat" / "1.jpg", images.pet_jpeg_bytes("cat"))
    with pytest.raises(ValueError, match=r"missing class folder\(s\) \['dog'\]"):
        list_images(tmp_path / "a")
    images.write(tmp_path / "a" / "Dog" / "1.jpg", images.pet_jpeg_bytes("dog"))
    images.write(tmp_path / "a" / "Cat" / "2.jpg", images.pet_jpeg_bytes("cat"))
    with pytest.raises(ValueError, match="one class in two folders"):
        list_images(tmp_path / "a")


def test_evaluate_refuses_a_folder_with_no_labelled_photos(
    tiny_model_base: Path, tmp_path: Path
) -> None:
    images.write(tmp_path / "photos" / "holiday.jpg", images.pet_jpeg_bytes("cat"))
    with pytest.raises(ValueError, match="found neither"):
        evaluate(tiny_model_base / "1", tmp_path / "photos", out_dir=tmp_path / "eval")
    images.write(tmp_path / "broken" / "cat.1.jpg", b"")
    with pytest.raises(ValueError, match="none of its 1 images decodes"):
        evaluate(tiny_model_base / "1", tmp_path / "broken", out_dir=tmp_path / "eval")


def test_robustness_reads_raw_photos_and_lists_the_files_it_left_out(
    tiny_model_base: Path, tmp_path: Path
) -> None:
    from training.robustness import run_suite

    folder, broken = _raw_photos(tmp_path / "raw", "flat")
    results = run_suite(tiny_model_base / "1", folder, ["original", "jpeg q30"])
    for report in results.values():
        assert report["count"] == 6
        assert [s["path"] for s in report["skipped"]] == [str(p) for p in broken]
