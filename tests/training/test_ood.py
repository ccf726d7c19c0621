"""The "neither" score: the Mahalanobis fit, its in-graph layer, and its export.

* Points near a class mean score low, far ones high; the threshold lets the
  chosen share of validation scores pass.
* The Keras layer computes the same score as the numpy fit.
* ``export_run(..., ood=True)`` writes a SavedModel whose ``serving_default``
  returns ``probabilities`` and ``ood_score``, metadata with an ``"ood"``
  object, and evaluation counts the flagged images; without ``ood`` the export
  keeps its single output.
* The "neither" check counts the images of each category the score catches
  and the cat/dog photos it flags.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from catdog.runtimes import load_signature
from tests import images
from tests.images import MakeSplit
from training.evaluate import evaluate
from training.export import export_run, load_outputs
from training.models import make_model
from training.neither import check, format_report, package_samples, synthetic
from training.ood import (
    choose_threshold,
    features_and_probabilities,
    fit_gaussians,
    mahalanobis_scores,
    make_score_layer,
    unit_length,
)

pytestmark = pytest.mark.filterwarnings(  # noise from inside Keras 3.15, not from the project
    "ignore:__array__ implementation doesn't accept:DeprecationWarning"
)


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], 200)
    centres = np.array([[3.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])
    return centres[labels] + rng.normal(0, 0.5, (400, 4)), labels


def test_far_points_score_higher_than_points_near_a_class() -> None:
    features, labels = _clusters()
    fit = fit_gaussians(unit_length(features), labels)
    near = mahalanobis_scores(np.array([[3.0, 0, 0, 0], [-3.0, 0.2, 0, 0]]), fit)
    far = mahalanobis_scores(np.array([[0.0, 0, 0, 0], [3.0, 5.0, 0, 0]]), fit)
    assert near.max() < 0.5 < 5 < far.min()


def test_threshold_lets_the_chosen_share_pass() -> None:
    scores = np.random.default_rng(1).exponential(size=1000).astype(np.float32)
    threshold = choose_threshold(scores, 0.99)
    assert 0.99 <= np.mean(scores <= threshold) < 0.995


def test_weak_features_pointing_elsewhere_score_high() -> None:
    features, labels = _clusters()
    fit = fit_gaussians(unit_length(features), labels)
    # Short vectors near the origin, but not along a class direction: far once scaled.
    weak = np.array([[0.1, 0.3, 0.0, 0.0], [0.0, 0.0, 0.2, 0.1]])
    assert mahalanobis_scores(weak, fit).min() > 5


def test_full_rank_fit_is_the_inverse_covariance() -> None:
    features, labels = _clusters()
    fit = fit_gaussians(features, labels, ridge=0.0)
    centred = features - fit.means[labels]
    covariance = centred.T @ centred / len(features)
    assert fit.basis.shape == (4, 4) and fit.residual == 0
    np.testing.assert_allclose(fit.precision(), np.linalg.inv(covariance), rtol=1e-4)


def test_low_rank_fit_keeps_the_largest_directions_and_spreads_the_rest() -> None:
    rng = np.random.default_rng(2)
    spreads = np.array([5.0, 3.0, 1.0, 1.0, 1.0, 1.0])  # two strong directions, an even rest
    features = rng.normal(0, 1, (20000, 6)) * spreads
    labels = np.repeat([0, 1], 10000)
    low = fit_gaussians(features, labels, ridge=0.0, rank=2)
    full = fit_gaussians(features, labels, ridge=0.0, rank=6)
    assert low.basis.shape == (6, 2)
    np.testing.assert_allclose(np.abs(low.basis[:2]), np.eye(2), atol=0.02)
    assert low.residual == pytest.approx(1.0, rel=0.02)
    # the rest really was even here, so the low-rank precision is the full one
    np.testing.assert_allclose(low.precision(), full.precision(), atol=0.03)
    probe = features[:50]
    np.testing.assert_allclose(
        mahalanobis_scores(probe, low), mahalanobis_scores(probe, full), rtol=0.05
    )


@pytest.mark.parametrize("rank", [4, 2])
def test_keras_layer_matches_the_numpy_score(rank: int) -> None:
    features, labels = _clusters()
    fit = fit_gaussians(unit_length(features), labels, rank=rank)
    layer = make_score_layer(fit)
    assert layer.rank == rank
    probe = features[:10].astype(np.float32) * 1.5
    np.testing.assert_allclose(np.asarray(layer(probe)), mahalanobis_scores(probe, fit), rtol=1e-4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with an (untrained, 32x32) transfer checkpoint and its config."""
    folder = tmp_path_factory.mktemp("run")
    model = make_model("transfer", (32, 32, 3), 2, weights=None, augmentation=False)
    model.save(folder / "best.keras")
    (folder / "config.json").write_text(json.dumps({"architecture": "transfer"}))
    return folder


@pytest.fixture(scope="module")
def split(run: Path) -> Path:
    return images.write_split(run.parent / "split", 6, size=(32, 32))


@pytest.fixture(scope="module")
def ood_version(run: Path, split: Path) -> Path:
    """The run exported with an OOD fit."""
    return export_run(run, run.parent / "models", version=1, data_dir=split, ood=True)


def test_export_with_ood_returns_both_outputs(run: Path, split: Path, ood_version: Path) -> None:
    version = ood_version
    meta = json.loads((version / "metadata.json").read_text())
    ood = meta["ood"]
    assert ood["method"] == "mahalanobis" and ood["output"] == "ood_score"
    assert ood["validation_pass_rate"] >= 0.99
    assert ood["fitted_on"]["images"] == 12
    # The highest-scoring validation image sits at the threshold itself; batched
    # float32 arithmetic may put it a hair above.
    assert meta["metrics"]["validation"]["ood"]["flagged"] <= 1

    _, names, _ = load_signature(version)
    assert names == ("ood_score", "probabilities")
    outputs, _ = load_outputs(version)
    images = np.random.default_rng(3).random((5, 32, 32, 3), dtype=np.float32)
    got = outputs(images)
    assert got["probabilities"].shape == (5, 2) and got["ood_score"].shape == (5,)

    # The exported score is the numpy score of the checkpoint's features.
    checkpoint = keras.saving.load_model(run / "best.keras")
    features, probabilities = features_and_probabilities(checkpoint)(images)
    np.testing.assert_allclose(got["probabilities"], np.asarray(probabilities), atol=1e-5)
    assert np.all(got["ood_score"] >= 0)

    report = evaluate(version, split / "test", out_dir=run.parent / "eval")
    assert report["ood"]["threshold"] == ood["threshold"]
    assert 0 <= report["ood"]["flagged"] <= report["count"]


def test_neither_check_counts_each_category(ood_version: Path, split: Path) -> None:
    categories = synthetic(3, seed=1)
    categories["package samples"] = package_samples()[:2]
    report = check(ood_version, split / "test", categories)
    assert set(report["neither"]) == {"drawings", "textures", "scenes", "package samples"}
    assert report["neither"]["drawings"]["count"] == 3
    assert report["photos"]["count"] == 12
    assert report["neither_total"]["count"] == 11
    table = format_report(report)
    assert "| textures | 3 |" in table and "cat/dog photos" in table
    assert "left out" not in table


def test_neither_check_counts_what_it_left_out(ood_version: Path, tmp_path: Path) -> None:
    """Raw cat.N.jpg photos, one of them empty, and a neither image that is not one."""
    images.write_raw_flat(tmp_path / "photos", 2)
    images.write(tmp_path / "photos" / "dog.9.jpg", b"")
    categories = {"drawings": synthetic(2, seed=1)["drawings"] + [images.text_bytes()]}
    report = check(ood_version, tmp_path / "photos", categories)
    assert report["photos"]["count"] == 4 and report["photos"]["unreadable"] == 1
    assert report["neither"]["drawings"]["count"] == 2
    assert report["neither"]["drawings"]["unreadable"] == 1
    assert "left out, as they do not decode: drawings: 1, cat/dog photos" in format_report(report)


def test_neither_check_needs_an_ood_model(tiny_model_base: Path, split: Path) -> None:
    with pytest.raises(ValueError, match="no OOD score"):
        check(tiny_model_base / "1", split / "test", {"drawings": []})


def test_export_without_ood_keeps_one_output(run: Path, make_split: MakeSplit) -> None:
    split = make_split(per_split=2)
    version = export_run(run, run.parent / "plain", version=1, data_dir=split)
    _, names, _ = load_signature(version)
    assert len(names) == 1
    assert "ood" not in json.loads((version / "metadata.json").read_text())
    assert "ood" not in evaluate(version, split / "test", out_dir=run.parent / "e2")


def test_ood_needs_data(run: Path) -> None:
    with pytest.raises(ValueError, match="needs --data"):
        export_run(run, run.parent / "none", version=1, ood=True)


def test_predict_prints_the_score_and_its_verdict(
    ood_version: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.__main__ import main

    threshold = json.loads((ood_version / "metadata.json").read_text())["ood"]["threshold"]
    images.write(tmp_path / "photos" / "cat.jpg", images.pet_jpeg_bytes("cat", (32, 32)))
    images.write(tmp_path / "photos" / "drawing.png", synthetic(1, seed=2)["drawings"][0])
    assert main(["predict", "--model", str(ood_version), str(tmp_path / "photos")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        match = re.search(r"  (cat|dog)  cat=[0-9.]+  dog=[0-9.]+  ood=([0-9.]+) (\w+)$", line)
        assert match, line
        if abs(float(match[2]) - threshold) > 1e-3:  # the printed score is rounded
            assert match[3] == ("neither" if float(match[2]) > threshold else "known"), line
