"""``catdog.runtimes.load_model``: LiteRT and TensorFlow behind one interface.

Tiny untrained models (``tests.tiny_models``), one with a single output and one
with ``probabilities`` + ``ood_score``, each converted with ``add_litert``. The
runtimes must agree within 1e-5; ``auto`` picks LiteRT only when the folder has
``model.tflite``; ``litert`` refuses a folder without one; and a process that
serves LiteRT never imports TensorFlow or Keras.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from catdog.contract import LITERT_FILE
from catdog.litert import LiteRTModel
from catdog.runtimes import Inference, load_model, load_saved_model, version_dirs, version_number
from tests.tiny_models import SIZE, export_tiny, images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``plain`` (one output) and ``ood`` (two outputs), both with model.tflite."""
    from training.litert import add_litert

    base = tmp_path_factory.mktemp("runtimes")
    found = {}
    for name in ("plain", "ood"):
        folder = export_tiny(base / name, ood=name == "ood")
        add_litert(folder, images(8, seed=1))
        found[name] = folder
    return found


@pytest.fixture
def without_tflite(versions: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the plain version with no model.tflite."""
    folder = shutil.copytree(versions["plain"], tmp_path / "1")
    (folder / LITERT_FILE).unlink()
    return folder


@pytest.mark.parametrize("name", ["plain", "ood"])
def test_runtimes_agree_within_1e5(versions: dict[str, Path], name: str) -> None:
    litert = load_model(versions[name], "litert")
    tensorflow = load_model(versions[name], "tensorflow")
    batch = images(7, seed=2)
    a, b = litert.infer(batch), tensorflow.infer(batch)
    assert (litert.name, tensorflow.name) == ("litert", "tensorflow")
    assert a.probabilities.shape == b.probabilities.shape == (7, 2)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-5)
    if name == "ood":
        assert litert.has_ood_score and tensorflow.has_ood_score
        assert a.ood_score is not None and b.ood_score is not None
        assert a.ood_score.shape == b.ood_score.shape == (7,)
        np.testing.assert_allclose(a.ood_score, b.ood_score, rtol=0, atol=1e-5)
    else:
        assert a.ood_score is None and b.ood_score is None


def test_auto_serves_litert_when_the_folder_has_model_tflite(
    versions: dict[str, Path], without_tflite: Path
) -> None:
    assert load_model(versions["plain"]).name == "litert"
    assert load_model(without_tflite, "auto").name == "tensorflow"
    assert load_model(versions["plain"], "tensorflow").name == "tensorflow"


def test_litert_refuses_a_folder_without_model_tflite(without_tflite: Path) -> None:
    with pytest.raises(ValueError, match="no model.tflite") as caught:
        load_model(without_tflite, "litert")
    assert str(without_tflite) in str(caught.value)


def test_unknown_runtime_and_bad_threads_are_refused(versions: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        load_model(versions["plain"], "onnx")
    with pytest.raises(ValueError, match="threads"):
        load_model(versions["plain"], "litert", threads=0)


def test_a_model_tflite_that_metadata_does_not_vouch_for_is_refused(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    folder = shutil.copytree(versions["plain"], tmp_path / "1")
    shutil.copyfile(versions["ood"] / LITERT_FILE, folder / LITERT_FILE)  # another model
    with pytest.raises(ValueError, match="sha256"):
        load_model(folder, "litert")


def test_litert_model_input_must_match_the_contract(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    folder = shutil.copytree(versions["plain"], tmp_path / "1")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["image_size"] = [64, 64]
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="metadata.json says"):
        load_model(folder, "litert")


def test_infer_checks_the_input_and_takes_an_empty_batch(versions: dict[str, Path]) -> None:
    runtime = load_model(versions["ood"], "litert")
    with pytest.raises(ValueError, match="expected images"):
        runtime.infer(np.zeros((1, 16, 16, 3), np.float32))
    empty = runtime.infer(np.zeros((0, *SIZE, 3), np.float32))
    assert isinstance(empty, Inference)
    assert empty.probabilities.shape == (0, 2)
    assert empty.ood_score is not None and empty.ood_score.shape == (0,)


def test_batch_sizes_change_freely_and_match_single_images(versions: dict[str, Path]) -> None:
    runtime = load_model(versions["ood"], "litert")
    batch = images(9, seed=4)
    one_by_one = np.concatenate([runtime.infer(batch[i : i + 1]).probabilities for i in range(9)])
    for size in (9, 3, 1, 9):  # grow, shrink, grow again: the input is resized each time
        np.testing.assert_allclose(
            runtime.infer(batch[:size]).probabilities, one_by_one[:size], rtol=0, atol=1e-6
        )


def test_fixed_batch_buckets_give_the_same_outputs(versions: dict[str, Path]) -> None:
    content = (versions["ood"] / LITERT_FILE).read_bytes()
    resized = LiteRTModel(content)
    bucketed = LiteRTModel(content, buckets=(1, 4, 8))
    for count in (1, 3, 8, 11):  # 3 pads to 4; 11 is split into 8 + 3 (padded to 4)
        batch = images(count, seed=count)
        a, b = resized.infer(batch), bucketed.infer(batch)
        assert set(a) == set(b) == {"probabilities", "ood_score"}
        for name in a:
            assert b[name].shape[0] == count
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)


def test_concurrent_callers_each_get_their_own_interpreter(versions: dict[str, Path]) -> None:
    content = (versions["plain"] / LITERT_FILE).read_bytes()
    model = LiteRTModel(content, threads=1)
    batch = images(4, seed=6)
    expected = model.infer(batch)["output_0"]
    start, errors = threading.Barrier(4), []

    def work() -> None:
        start.wait()
        for _ in range(20):
            got = model.infer(batch)["output_0"]
            if not np.allclose(got, expected, rtol=0, atol=1e-6):
                errors.append(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert 1 <= model.interpreters <= 4  # one per concurrent caller, reused afterwards
    before = model.interpreters
    model.infer(batch)
    assert model.interpreters == before


def test_load_saved_model_returns_the_probabilities_of_a_two_output_model(
    versions: dict[str, Path],
) -> None:
    predict, contract = load_saved_model(versions["ood"])
    batch = images(3, seed=7)
    probabilities = predict(batch)
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert contract.image_size == SIZE


def test_serving_litert_imports_no_tensorflow_or_keras(versions: dict[str, Path]) -> None:
    script = f"""
import sys
import numpy as np
import catdog.litert
from catdog.runtimes import load_model
runtime = load_model({str(versions["ood"])!r}, "auto", threads=2)
out = runtime.infer(np.zeros((2, {SIZE[0]}, {SIZE[1]}, 3), np.float32))
assert runtime.name == "litert" and out.ood_score.shape == (2,), runtime
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print("heavy:", heavy)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout, done.stdout


def test_only_ascii_digit_folders_are_versions(tmp_path: Path) -> None:
    for name in ("1", "12", "²", "٣", "v3", "007x"):
        (tmp_path / name).mkdir()
    assert sorted(version_dirs(tmp_path)) == [1, 12]  # int("²") raised before
    assert version_number("9" * 5000) is None  # int() raises past 4,300 digits
    assert version_number("2") == 2
