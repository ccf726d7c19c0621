"""The "neither" signal: a model with an ``ood_score`` output marks each prediction known or not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from servicekit import value
from tests.app.helpers import good_image, metrics_text, serve, settings_for, upload
from tests.tiny_models import export_tiny


@pytest.fixture(scope="module")
def ood_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version folder with an ``ood_score`` output and a LiteRT file, made once."""
    from training.litert import add_litert

    folder = export_tiny(tmp_path_factory.mktemp("ood") / "1", ood=True)
    set_threshold(folder, 0.0)
    add_litert(folder)
    return folder


def set_threshold(folder: Path, threshold: float) -> None:
    """Write the version's OOD threshold into its metadata."""
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["ood"] = {"method": "test", "output": "ood_score", "threshold": threshold}
    (folder / "metadata.json").write_text(json.dumps(metadata))


def _ood_base(source: Path, tmp_path: Path, threshold: float) -> Path:
    """A model base folder whose version 1 is a copy of ``source`` with that threshold."""
    folder = Path(shutil.copytree(source, tmp_path / "catdog" / "1"))
    set_threshold(folder, threshold)
    return folder.parent


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
@pytest.mark.parametrize(("threshold", "known"), [(1e9, True), (-1e9, False)])
async def test_known_follows_the_score_and_the_threshold(
    ood_version: Path, tmp_path: Path, runtime: str, threshold: float, known: bool
) -> None:
    base = _ood_base(ood_version, tmp_path, threshold)
    async with serve(settings_for(base, runtime=runtime)) as (_, client):
        response = await client.post("/predict", files=upload(good_image()))
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body["ood_score"], float)
        assert body["known"] is known
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-9  # unchanged by the score
        text = await metrics_text(client)
        assert value(text, "catdog_predictions_total", known=str(known).lower()) == 1


async def test_the_page_shows_when_a_photo_is_neither(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "app" / "static" / "index.html").read_text()
    assert 'id="neither"' in page and "prediction.known !== false" in page
