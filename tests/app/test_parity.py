"""The service feeds the model exactly what the training loader yields for the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests import images
from tests.app.helpers import gradient_jpeg_bytes, serve, settings_for, upload
from training.data import make_dataset

TINY_SIZE = (32, 32)


def write_files(split: Path) -> list[Path]:
    """Real image files of several kinds in a ``<split>/{cat,dog}/`` folder."""
    rgba = np.dstack(
        [
            np.asarray(images.noisy((48, 40), images.RED, seed=1)),
            np.linspace(0, 255, 48 * 40).reshape(40, 48).astype(np.uint8),  # varying alpha
        ]
    )
    rotated = images.noisy((64, 40), images.BLUE, seed=2)
    rotated.paste(images.solid((20, 40), images.RED), (0, 0))  # not symmetric
    files = {
        "cat/photo.jpg": images.jpeg_bytes(image=images.noisy((120, 90), seed=3)),
        "cat/large.jpg": gradient_jpeg_bytes((1600, 1200)),
        "cat/rgba.png": images.encode(images.Image.fromarray(rgba, "RGBA"), "PNG"),
        "dog/rotated.jpg": images.exif_rotated_jpeg_bytes(rotated, orientation=6),
        "dog/mirrored.jpg": images.exif_rotated_jpeg_bytes(
            rotated.transpose(images.Image.Transpose.FLIP_TOP_BOTTOM), orientation=2
        ),
        "dog/palette.png": images.png_palette_bytes((50, 30), images.BLUE, transparent=True),
        "dog/sixteen.png": images.png_16bit_bytes((30, 50), value=40_000),
    }
    return [images.write(split / name, data) for name, data in files.items()]


async def test_service_input_equals_training_input(tiny_model_base: Path, tmp_path: Path) -> None:
    split = tmp_path / "split"
    paths = write_files(split)

    dataset = make_dataset(split, image_size=TINY_SIZE, batch_size=4, shuffle=False, cache=False)
    expected_x = np.concatenate([x.numpy() for x, _ in dataset])
    expected = dict(zip(dataset.file_paths, expected_x))
    assert sorted(expected) == sorted(str(p) for p in paths)

    async with serve(settings_for(tiny_model_base, max_batch_size=1)) as (app, client):
        model = app.state.service.model
        original = model.infer_rows
        fed: list[np.ndarray] = []

        def recording_infer(batch: np.ndarray) -> list:
            fed.append(np.array(batch, copy=True))
            return original(batch)

        model.infer_rows = recording_infer  # type: ignore[method-assign]  # what reaches the model
        for path in paths:
            fed.clear()
            response = await client.post("/predict", files=upload(path.read_bytes(), path.name))
            assert response.status_code == 200, f"{path}: {response.text}"
            [batch] = fed
            assert batch.shape == (1, *TINY_SIZE, 3)
            assert batch.dtype == np.float32
            want = expected[str(path)]
            assert want.dtype == np.float32
            np.testing.assert_allclose(batch[0], want, rtol=0, atol=1e-6, err_msg=str(path))

    # The files are really different from each other (the comparison is not trivial).
    names = list(expected)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(expected[a] - expected[b]).max() > 0.05, (a, b)
