"""Round trip: prepare -> train (really, briefly) -> export -> reload gives the same predictions."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog.contract import SIGNATURE
from catdog.runtimes import load_saved_model
from tests import images
from training.data import make_dataset
from training.evaluate import evaluate
from training.export import export_run, load_predictor
from training.prepare import prepare
from training.train import TrainConfig, train

SIZE = (32, 32)
EPOCHS = 2

pytestmark = [  # noise from inside Keras 3.15 itself, not from the project
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]


class Trained(NamedTuple):
    split: Path
    run: Path
    result: dict[str, Any]
    fingerprint: str
    base: Path
    version: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A prepared split, a two-epoch article-1 run on it, and its export as version 1."""
    root = tmp_path_factory.mktemp("roundtrip")
    images.write_raw_flat(root / "raw", per_class=20)
    manifest = prepare(root / "raw", root / "split", seed=0)  # 16/2/2 per class
    config = TrainConfig(
        data_dir=str(root / "split"),
        run_dir=str(root / "run"),
        architecture="article-1",
        epochs=EPOCHS,
        batch_size=8,
        image_size=SIZE,
        cache=True,
        seed=0,
    )
    result = train(config)
    base = root / "models" / "catdog"
    version = export_run(root / "run", base, data_dir=root / "split")
    return Trained(root / "split", root / "run", result, manifest["fingerprint"], base, version)


def test_training_writes_checkpoint_history_plot_and_config(trained: Trained) -> None:
    run = trained.run
    for name in ("best.keras", "history.json", "history.png", "config.json", "result.json"):
        assert (run / name).is_file(), name
    assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    history = json.loads((run / "history.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        assert len(history[key]) == EPOCHS, key
        assert all(np.isfinite(history[key]))
    assert all(s > 0 for s in history["epoch_seconds"])
    assert all(0 <= a <= 1 for a in history["accuracy"] + history["val_accuracy"])

    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "article-1"
    assert config["image_size"] == list(SIZE)
    assert config["dataset_fingerprint"] == trained.fingerprint
    assert config["steps_per_epoch"] == 4  # 32 training images, batches of 8

    assert trained.result["val_accuracy"] == max(history["val_accuracy"])
    assert 1 <= trained.result["best_epoch"] <= EPOCHS
    model = keras.saving.load_model(run / "best.keras")
    assert model.input_shape == (None, *SIZE, 3)


def test_export_writes_savedmodel_and_metadata(trained: Trained) -> None:
    version = trained.version
    assert version == trained.base / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables").is_dir()
    meta = json.loads((version / "metadata.json").read_text())

    assert meta["class_names"] == ["cat", "dog"]
    assert meta["image_size"] == list(SIZE)
    assert meta["scaling"] == "x/255"
    assert meta["architecture"] == "article-1"
    assert meta["dataset_fingerprint"] == trained.fingerprint
    assert meta["tensorflow"] == tf.__version__
    assert meta["keras"] == keras.__version__
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert meta["version"] == 1 and meta["name"] == "catdog"
    for split in ("validation", "test"):
        report = meta["metrics"][split]
        assert report["count"] == 4  # 2 cats + 2 dogs
        assert sum(map(sum, report["confusion_matrix"])) == 4
        assert 0 <= report["accuracy"] <= 1
    # No half-written staging folder is left behind.
    assert not [p.name for p in trained.base.iterdir() if not p.name.isdigit()]


def test_savedmodel_predicts_like_the_keras_model(trained: Trained) -> None:
    model = keras.saving.load_model(trained.run / "best.keras")
    x = np.concatenate([x.numpy() for x, _ in make_dataset(trained.split / "test", SIZE)])
    expected = np.asarray(model(x, training=False))

    loaded = tf.saved_model.load(str(trained.version))
    signature = loaded.signatures[SIGNATURE]
    (output,) = signature(images=tf.constant(x)).values()
    np.testing.assert_allclose(output.numpy(), expected, rtol=0, atol=1e-5)

    predict, contract = load_saved_model(trained.version)
    np.testing.assert_allclose(predict(x), expected, rtol=0, atol=1e-5)
    assert contract.image_size == SIZE and contract.class_names == ("cat", "dog")


def test_exporting_again_adds_version_2_and_the_highest_is_loaded(trained: Trained) -> None:
    second = export_run(trained.run, trained.base)
    assert second == trained.base / "2"
    assert (second / "saved_model.pb").is_file()
    assert json.loads((second / "metadata.json").read_text())["metrics"] == {}

    predict, contract = load_predictor(trained.base)
    assert contract.extra["version"] == 2
    assert load_predictor(trained.version)[1].extra["version"] == 1

    with pytest.raises(ValueError, match="already exists"):
        export_run(trained.run, trained.base, version=1)
    assert sorted(p.name for p in trained.base.iterdir()) == ["1", "2"]


def test_export_without_a_checkpoint_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="best.keras"):
        export_run(tmp_path, tmp_path / "models")


def test_evaluate_a_keras_checkpoint_writes_beside_the_run(trained: Trained) -> None:
    report = evaluate(trained.run / "best.keras", trained.split / "test", batch_size=3)
    out = trained.run / "evaluation-test"
    assert json.loads((out / "evaluation.json").read_text())["count"] == report["count"] == 4
    assert (out / "confusion.png").is_file()
    meta = json.loads((trained.version / "metadata.json").read_text())
    assert report["confusion_matrix"] == meta["metrics"]["test"]["confusion_matrix"]
