"""Shared fixtures: synthetic split folders and a really trained, exported tiny model.

``TF_CPP_MIN_LOG_LEVEL`` is set before anything imports TensorFlow so test
output stays readable. The fixtures here are used by both ``tests/training``
and the service tests, so their names and return values are part of the suite's
interface:

* ``make_split(name="split", per_split=4, size=(32, 32), seed=0) -> Path``
* ``tiny_model_base -> Path`` (a model base folder holding version ``1/``)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import images  # noqa: E402
from tests.images import MakeSplit  # noqa: E402

# Modules measured slowest (``pytest --durations=0``), handed to the two workers first:
# ``make test`` runs with ``--dist loadfile`` (each module on one worker, so its shared
# fixtures are made once) and ``--no-loadscope-reorder`` (xdist keeps this order instead
# of sending the modules with the most tests first); started last, a slow module would
# leave one worker running alone at the end. (``--dist loadgroup`` cannot group: with
# pytest 9, xdist 3.8 no longer adds the group to a test's id, pytest-xdist issue 1386.)
SLOWEST_FIRST = (
    "tests/batch/test_jobs.py",
    "tests/training/test_resume.py",
    "tests/training/test_teacher.py",
    "tests/app/test_grpc.py",
    "tests/app/test_server.py",
    "tests/app/test_offload.py",
    "tests/training/test_distributed.py",
    "tests/training/test_flatbuffer.py",
    "tests/app/test_hardening.py",
    "tests/training/test_ood.py",
    "tests/app/test_fuzz.py",
    "tests/training/test_export_augmented.py",
    "tests/app/test_ops.py",
    "tests/app/test_attack.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of ``SLOWEST_FIRST`` first, in its order; the others as collected."""
    rank = {module: i for i, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


TINY_SIZE = (32, 32)  # (height, width) of the tiny model
TINY_ARCHITECTURE = "article-1"


@pytest.fixture
def make_split(tmp_path: Path) -> MakeSplit:
    """Factory for prepared-style folders ``<root>/{train,validation,test}/{cat,dog}/*.jpg``.

    Call it as ``make_split(name="split", per_split=4, size=(32, 32), seed=0)``;
    ``per_split`` is the number of images per class in each split (an int, or a
    mapping split -> count). Cats are reddish and dogs bluish, with noise.
    """

    def make(
        name: str = "split",
        per_split: Mapping[str, int] | int = 4,
        size: tuple[int, int] = (32, 32),
        seed: int = 0,
    ) -> Path:
        return images.write_split(tmp_path / name, per_split, size=size, seed=seed)

    return make


def _tiny_training_set(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed JPEG pets (as the service would see them) and one-hot labels."""
    from catdog.preprocessing import preprocess

    x, y = [], []
    for i in range(count):
        label = i % 2  # 0 = cat, 1 = dog
        name = ("cat", "dog")[label]
        x.append(preprocess(images.pet_jpeg_bytes(name, (32, 32), seed + i), TINY_SIZE))
        y.append(np.eye(2, dtype=np.float32)[label])
    return np.stack(x), np.stack(y)


@pytest.fixture(scope="session")
def tiny_model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model base folder ``<tmp>/catdog/`` holding version ``1/``.

    The model is ``article-1`` at 32x32, really trained for a few epochs on
    synthetic cats (reddish) and dogs (bluish), then exported with
    ``training.export.export_model`` (SavedModel + metadata.json). It tells the
    two colours apart.
    """
    import keras

    from training.export import export_model
    from training.models import make_model
    from training.train import TrainConfig, compile_model

    keras.utils.set_random_seed(1234)
    x_train, y_train = _tiny_training_set(32, seed=0)
    x_val, y_val = _tiny_training_set(8, seed=1000)
    model = make_model(TINY_ARCHITECTURE, (*TINY_SIZE, 3), 2)
    compile_model(model, TrainConfig(data_dir="", run_dir=""), 1e-3)
    model.fit(x_train, y_train, batch_size=8, epochs=4, verbose=0)
    loss, accuracy = model.evaluate(x_val, y_val, verbose=0)
    base = tmp_path_factory.mktemp("models") / "catdog"
    metadata = {
        "architecture": TINY_ARCHITECTURE,
        "metrics": {
            "validation": {"accuracy": float(accuracy), "loss": float(loss), "count": len(x_val)}
        },
        "dataset_fingerprint": None,
    }
    export_model(model, base, metadata=metadata, version=1, check_images=x_val)
    return base
