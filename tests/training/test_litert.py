"""LiteRT conversion: export writes a checked ``model.tflite``; the CLI adds one later.

``add_litert`` writes the file only when LiteRT agrees with the SavedModel within
1e-5 (probabilities and ``ood_score``), and records the parity in metadata.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from catdog.contract import LITERT_FILE
from catdog.runtimes import load_model
from tests.images import MakeSplit
from tests.tiny_models import export_tiny, images
from training.__main__ import main
from training.export import export_model
from training.litert import TOLERANCE, add_litert


def _tree(folder: Path) -> dict[str, str]:
    """sha256 of every file of a SavedModel (saved_model.pb, variables/...)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (LITERT_FILE, "metadata.json")
    }


def _litert_record(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())["runtimes"]["litert"]


def test_export_writes_a_checked_model_tflite(tmp_path: Path) -> None:
    from training.models import make_model

    model = make_model("article-1", (32, 32, 3), 2)
    check = images(5, seed=8)
    folder = export_model(model, tmp_path / "catdog", version=1, check_images=check)
    tflite = folder / LITERT_FILE
    assert tflite.is_file()
    assert not list(folder.glob(".*"))  # no temporary files left
    record = _litert_record(folder)
    assert record["file"] == LITERT_FILE
    assert record["checked_images"] == 5 and record["random_images"] >= 1
    assert 0 <= record["max_abs_diff"] <= TOLERANCE
    assert record["sha256"] == hashlib.sha256(tflite.read_bytes()).hexdigest()
    assert record["bytes"] == tflite.stat().st_size
    assert record["ai_edge_litert"] == "2.3.0"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["runtimes"]["tensorflow"]["signature"] == "serving_default"
    assert load_model(folder).name == "litert"
    np.testing.assert_allclose(
        load_model(folder).infer(check).probabilities,
        np.asarray(model(check, training=False)),
        rtol=0,
        atol=1e-5,
    )


def test_add_litert_records_ood_score_parity(tmp_path: Path) -> None:
    folder = export_tiny(tmp_path / "1", ood=True)
    record = add_litert(folder, iter([images(3, seed=1), images(4, seed=2)]))
    assert record["outputs"] == ["ood_score", "probabilities"]
    assert record["checked_images"] == 7
    assert 0 <= record["max_abs_diff_ood_score"] <= TOLERANCE
    assert load_model(folder).has_ood_score


def test_a_conversion_outside_the_tolerance_writes_nothing(tmp_path: Path) -> None:
    folder = export_tiny(tmp_path / "1")
    before = (folder / "metadata.json").read_text()
    with pytest.raises(ValueError, match="disagrees"):
        add_litert(folder, images(2), tolerance=-1.0)  # nothing can meet it
    assert not (folder / LITERT_FILE).exists()
    assert (folder / "metadata.json").read_text() == before
    assert not list(folder.glob(".*"))  # no temporary file left behind


def test_cli_adds_model_tflite_to_an_exported_version_without_touching_it(
    tiny_model_base: Path, make_split: MakeSplit, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = shutil.copytree(tiny_model_base / "1", tmp_path / "catdog" / "1")
    (folder / LITERT_FILE).unlink()  # as a version exported before LiteRT
    metadata = json.loads((folder / "metadata.json").read_text())
    del metadata["runtimes"]
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    saved_model = _tree(folder)
    split = make_split(per_split={"train": 1, "validation": 1, "test": 3})

    assert main(["litert", str(tmp_path / "catdog"), "--data", str(split)]) == 0  # base: latest

    assert "max |Δp|" in capsys.readouterr().out
    assert _tree(folder) == saved_model
    record = _litert_record(folder)
    assert record["checked_images"] == 6  # the test split: 3 cats + 3 dogs
    assert record["checked_on"] == str(split / "test")
    assert record["max_abs_diff"] <= TOLERANCE
    after = json.loads((folder / "metadata.json").read_text())
    assert {k: v for k, v in after.items() if k != "runtimes"} == metadata
    assert load_model(folder, "litert").name == "litert"


def test_cli_reports_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    assert main(["litert", str(tmp_path)]) == 2


def test_a_nan_from_litert_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that answers NaN for one image (injected: a real one does not) must
    fail the check, not slip through it."""
    from catdog.litert import LiteRTModel

    folder = export_tiny(tmp_path / "catdog" / "1", ood=True)
    infer = LiteRTModel.infer

    def one_nan(self: LiteRTModel, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: np.array(value, np.float32) for name, value in infer(self, batch).items()}
        out["ood_score"][0] = np.nan
        return out

    monkeypatch.setattr(LiteRTModel, "infer", one_nan)
    with pytest.raises(ValueError, match="disagrees"):
        add_litert(folder, images(3))
    assert not (folder / LITERT_FILE).exists()
