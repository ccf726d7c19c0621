"""``training.data.make_dataset``: shapes, dtypes, labels, order and the shared preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from catdog.preprocessing import preprocess
from tests.images import MakeSplit
from training.data import list_images, make_dataset

SIZE = (32, 32)


def collect(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a dataset, batches concatenated."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def split(make_split: MakeSplit) -> Path:
    return make_split(per_split={"train": 6, "validation": 3, "test": 2}, size=(40, 36))


def test_batches_shapes_dtypes_and_range(split: Path) -> None:
    ds = make_dataset(split / "train", SIZE, batch_size=5, cache=False)
    batches = [(x.numpy(), y.numpy()) for x, y in ds]

    assert [len(x) for x, _ in batches] == [5, 5, 2]  # 12 images, batch size 5
    for x, y in batches:
        assert x.shape[1:] == (*SIZE, 3) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.shape[1:] == (2,) and y.dtype == np.float32
        np.testing.assert_array_equal(y.sum(axis=1), 1.0)
        assert set(np.unique(y)) <= {0.0, 1.0}
    assert ds.class_names == ["cat", "dog"]


def test_labels_follow_class_folders_in_class_order(split: Path) -> None:
    ds = make_dataset(split / "train", SIZE, batch_size=4, cache=False)
    _, labels = collect(ds)
    folders = [Path(p).parent.name for p in ds.file_paths]
    assert folders == ["cat"] * 6 + ["dog"] * 6
    expected = np.array([[1, 0] if f == "cat" else [0, 1] for f in folders], dtype=np.float32)
    np.testing.assert_array_equal(labels, expected)


def test_validation_order_is_sorted_files(split: Path) -> None:
    folder = split / "validation"
    ds = make_dataset(folder, SIZE, batch_size=2)
    expected = [str(p) for name in ("cat", "dog") for p in sorted((folder / name).iterdir())]
    assert ds.file_paths == expected
    x, y = collect(ds)
    assert len(x) == 6
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("cache", [True, False])
def test_elements_equal_the_shared_preprocess(split: Path, cache: bool) -> None:
    ds = make_dataset(split / "validation", SIZE, batch_size=4, cache=cache)
    x, _ = collect(ds)
    for got, path in zip(x, ds.file_paths):
        np.testing.assert_allclose(got, preprocess(path, SIZE), rtol=0, atol=1e-6)


def test_shuffle_is_seeded(split: Path) -> None:
    folder = split / "train"

    def order(seed: int) -> list[int]:
        ds = make_dataset(folder, SIZE, batch_size=4, shuffle=True, seed=seed, cache=False)
        x, y = collect(ds)
        reference = np.stack([preprocess(p, SIZE) for p in ds.file_paths])
        # Identify each shuffled image by the file it came from.
        indices = [int(np.abs(reference - image).max(axis=(1, 2, 3)).argmin()) for image in x]
        labels = [0 if Path(ds.file_paths[i]).parent.name == "cat" else 1 for i in indices]
        np.testing.assert_array_equal(y.argmax(axis=1), labels)  # labels travel with images
        return indices

    first, again, other = order(3), order(3), order(4)
    assert sorted(first) == list(range(12))  # a permutation: nothing lost or repeated
    assert first == again
    assert first != other
    assert first != list(range(12))


def test_missing_class_folder_or_no_images(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    with pytest.raises(ValueError, match=r"missing class folder\(s\) \['dog'\]"):
        list_images(tmp_path)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)


def test_limit_keeps_files_of_every_class(make_split: MakeSplit) -> None:
    split = make_split(per_split=6)
    ds = make_dataset(split / "train", (16, 16), 64, cache=False, limit=4)
    _, labels = next(iter(ds))
    assert len(ds.file_paths) == 4
    assert labels.numpy().sum(axis=0).tolist() == [2.0, 2.0]
