"""One served model version: its runtime, contract and warm-up.

``load_version`` loads a version folder with the chosen runtime (``CATDOG_RUNTIME``)
and runs it once per batch size the batcher can send it (1 to ``CATDOG_MAX_BATCH_SIZE``)
before the version is reported ready or swapped in, so no request is the first of its
size. A folder that cannot be served raises ``ModelLoadError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ModelLoadError
from catdog.contract import ModelContract
from catdog.runtimes import LoadedRuntime, load_model


@dataclass(frozen=True)
class ImageResult:
    """The model's output for one image."""

    probabilities: np.ndarray
    ood_score: float | None = None


@dataclass
class LoadedModel:
    """A served model version: where it came from and the runtime that runs it."""

    version: str
    path: Path
    runtime: LoadedRuntime = field(repr=False)

    @property
    def contract(self) -> ModelContract:
        """Class names, input size and scaling of this version."""
        return self.runtime.contract

    @property
    def runtime_name(self) -> str:
        """``litert`` or ``tensorflow``."""
        return self.runtime.name

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything ``metadata.json`` says, contract included."""
        return self.contract.to_dict()

    @property
    def ood_threshold(self) -> float | None:
        """Scores above this mark an image as unlike the training photos (None: no signal)."""
        ood = self.contract.extra.get("ood")
        return float(ood["threshold"]) if isinstance(ood, dict) and "threshold" in ood else None

    def infer_rows(self, images: np.ndarray) -> list[ImageResult]:
        """One result per image of a float32 batch [N, H, W, 3] in [0, 1]."""
        out = self.runtime.infer(images)
        probabilities = np.asarray(out.probabilities, dtype=np.float64)
        if probabilities.shape != (len(images), len(self.contract.class_names)):
            raise RuntimeError(f"model {self.version} returned shape {probabilities.shape}")
        scores = [None] * len(images) if out.ood_score is None else out.ood_score.tolist()
        return [ImageResult(p, s) for p, s in zip(probabilities, scores)]

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the model once per batch size; refuse a model with non-finite outputs."""
        for size in batch_sizes:
            rows = self.infer_rows(np.zeros((size, *self.contract.input_shape), np.float32))
            if not all(np.all(np.isfinite(r.probabilities)) for r in rows):
                raise ModelLoadError(f"{self.path}: warm-up produced non-finite outputs")


def load_version(path: Path, runtime: str, threads: int, warm_up_batch: int = 1) -> LoadedModel:
    """Load and warm up one version folder, or raise ``ModelLoadError`` naming it."""
    try:
        model = LoadedModel(path.name, path, load_model(path, runtime, threads))
        model.warm_up(tuple(range(1, warm_up_batch + 1)))
    except ModelLoadError:
        raise
    except Exception as exc:  # anything wrong with the folder refuses the version
        raise ModelLoadError(f"{path}: {exc}") from exc
    return model
