"""``python -m training``: help, predict (with unreadable files) and show-batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import images
from tests.images import MakeSplit
from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<file>\S+)  (?P<label>cat|dog)  cat=(?P<cat>[0-9.]+)  dog=(?P<dog>[0-9.]+)$"
)


def test_help_lists_every_command() -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "training", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for command in ("prepare", "show-batch", "train", "evaluate", "predict", "export"):
        assert command in done.stdout


def test_command_help_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--arch" in out and "article-3" in out and "--early-stopping" in out


def test_predict_prints_one_line_per_file(
    tiny_model_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    images.write(folder / "a_cat.jpg", images.pet_jpeg_bytes("cat", seed=101))
    images.write(folder / "b_dog.png", images.encode(images.pet("dog", seed=102), "PNG"))
    images.write(folder / "nested" / "c_cat.webp", images.webp_bytes(color=images.RED))
    images.write(folder / "d_truncated.jpg", images.truncated_jpeg_bytes())
    images.write(folder / "e_text.jpg", images.text_bytes())
    images.write(folder / "f_empty.jpg", images.EMPTY)
    images.write(folder / "readme.txt", images.text_bytes())  # not an image name: ignored

    code = main(["predict", "--model", str(tiny_model_base), str(folder)])

    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    by_name = {Path(line.split("  ")[0]).name: line for line in lines}
    assert set(by_name) == {
        "a_cat.jpg",
        "b_dog.png",
        "c_cat.webp",
        "d_truncated.jpg",
        "e_text.jpg",
        "f_empty.jpg",
    }
    for name in ("a_cat.jpg", "b_dog.png", "c_cat.webp"):
        match = LINE.match(by_name[name])
        assert match, by_name[name]
        cat, dog = float(match["cat"]), float(match["dog"])
        assert cat + dog == pytest.approx(1.0, abs=2e-4)
        assert match["label"] == ("cat" if cat >= dog else "dog")
    # The tiny model learnt reddish = cat, bluish = dog.
    assert LINE.match(by_name["a_cat.jpg"])["label"] == "cat"
    assert LINE.match(by_name["b_dog.png"])["label"] == "dog"
    assert "truncated" in by_name["d_truncated.jpg"]
    for name in ("d_truncated.jpg", "e_text.jpg", "f_empty.jpg"):
        assert "  error: " in by_name[name]


def test_predict_a_single_file_and_a_missing_path(
    tiny_model_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = images.write(tmp_path / "dog.jpg", images.pet_jpeg_bytes("dog", seed=5))
    assert main(["predict", "--model", str(tiny_model_base / "1"), str(path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert LINE.match(line) and line.startswith(str(path))

    assert main(["predict", "--model", str(tiny_model_base), str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_predict_prints_a_name_that_is_not_utf8(
    tiny_model_base: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in ((b"caf\xe9.jpg", images.pet_jpeg_bytes("cat")), (b"\xff.jpg", b"")):
        Path(os.fsdecode(bytes(folder) + b"/" + name)).write_bytes(data)
    assert main(["predict", "--model", str(tiny_model_base), str(folder)]) == 0
    text = capsysbinary.readouterr().out.decode("utf-8")  # strict: every line is UTF-8
    assert "caf\\xe9.jpg  cat  cat=" in text and "\\xff.jpg  error: empty file" in text


def test_show_batch_writes_a_grid(
    make_split: MakeSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_split(per_split={"train": 3})
    out = tmp_path / "batch.png"

    code = main(
        [
            "show-batch",
            "--data",
            str(split),
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ]
    )

    text = capsys.readouterr().out
    assert code == 0
    assert "images (4, 32, 32, 3) float32" in text
    assert "labels (4, 2)" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_defaults_are_train_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train
    from training.train import TrainConfig

    seen: list[TrainConfig] = []
    monkeypatch.setattr(training.train, "train", lambda config: seen.append(config) or {})
    assert main(["train", "--data", "d", "--run", "r"]) == 0
    assert seen == [TrainConfig(data_dir="d", run_dir="r")]
    main(["train", "--data", "d", "--run", "r", "--arch", "transfer", "--no-cache"])
    assert seen[1].architecture == "transfer" and seen[1].cache is False
