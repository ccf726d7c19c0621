"""One exported model version, loaded and warmed up, and the classifier in front of it.

``LoadedModel`` wraps a SavedModel version folder (its predictor and contract).
``Classifier`` is what routes call: ``predict(list of image bytes)`` runs the
project's preprocessing in a thread pool, sends the arrays through the dynamic
batcher and turns probabilities into ``Prediction`` objects.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.api.schemas import Prediction
from app.core.errors import ModelLoadError
from catdog.budget import PixelBudget
from catdog.contract import ModelContract
from catdog.preprocessing import ImageError, preprocess
from catdog.runtimes import Predictor, latest_version, load_saved_model


@dataclass
class LoadedModel:
    """A served model version: predictor + contract + metadata."""

    version: str
    path: Path
    contract: ModelContract
    predictor: Predictor = field(repr=False)
    loaded_at: float = field(default_factory=time.time)

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything ``metadata.json`` says, contract included."""
        return self.contract.to_dict()

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] for float32 images [N, H, W, 3] in [0, 1]."""
        probabilities = np.asarray(self.predictor(images), dtype=np.float64)
        if probabilities.shape != (len(images), len(self.contract.class_names)):
            raise RuntimeError(f"model {self.version} returned shape {probabilities.shape}")
        return probabilities

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run the model once per batch size so the first request is not the slow one."""
        for size in batch_sizes:
            probabilities = self.infer(np.zeros((size, *self.contract.input_shape), np.float32))
            if not np.all(np.isfinite(probabilities)):
                raise ModelLoadError(f"{self.path}: warm-up produced non-finite outputs")


def load_version(path: str | Path, warm_up_batch: int = 1) -> LoadedModel:
    """Load and warm up one version folder, or raise ``ModelLoadError`` naming it."""
    path = Path(path)
    try:
        predictor, contract = load_saved_model(path)
        model = LoadedModel(version=path.name, path=path, contract=contract, predictor=predictor)
        model.warm_up(tuple(sorted({1, warm_up_batch})))
    except ModelLoadError:
        raise
    except Exception as exc:  # anything wrong with the folder refuses the version
        raise ModelLoadError(f"{path}: {exc}") from exc
    return model


def load_latest(base: str | Path, warm_up_batch: int = 1) -> LoadedModel:
    """Load the highest version under a model base folder (fail fast, naming the path)."""
    base = Path(base)
    if not base.exists():
        raise ModelLoadError(
            f"model folder {base.resolve()} does not exist "
            "(set CATDOG_MODEL_DIR to a folder holding <version>/saved_model.pb)"
        )
    try:
        version = latest_version(base)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    return load_version(version, warm_up_batch)


class Classifier:
    """Image bytes in, predictions out: preprocess, batch, infer, postprocess."""

    def __init__(
        self,
        registry: Any,
        batcher: Any,
        max_pixels: int,
        decode_workers: int,
        pixel_budget: PixelBudget,
    ) -> None:
        self._registry = registry
        self._batcher = batcher
        self._max_pixels = max_pixels
        self._decoder = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self.pixel_budget = pixel_budget

    async def predict(
        self, images: list[bytes], names: list[str] | None = None
    ) -> list[Prediction]:
        """Classify images, in order; raises ``ImageError`` (naming the file) for bad input."""
        model = self._registry.current
        with self._batcher.admit(len(images)) as ticket:
            results = await asyncio.gather(
                *(self._preprocess(model, data) for data in images), return_exceptions=True
            )
            for position, result in enumerate(results):
                if isinstance(result, BaseException):
                    if isinstance(result, ImageError) and len(images) > 1:
                        name = names[position] if names else f"#{position}"
                        raise type(result)(f"file {position} ({name}): {result.reason}")
                    raise result
            probabilities = await asyncio.gather(
                *(self._predict(ticket, model, a) for a in results)
            )
        return [self._postprocess(model, p) for p in probabilities]

    def check_room(self, count: int) -> None:
        """Raise ``QueueFullError`` now if ``count`` more images would not be admitted."""
        self._batcher.check_room(count)

    async def _preprocess(self, model: LoadedModel, data: bytes) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decoder,
            functools.partial(
                preprocess,
                data,
                model.contract.image_size,
                max_pixels=self._max_pixels,
                gate=self.pixel_budget.hold,
            ),
        )

    async def _predict(self, ticket: Any, model: LoadedModel, image: np.ndarray) -> np.ndarray:
        return await self._batcher.submit(ticket, model, image)

    @staticmethod
    def _postprocess(model: LoadedModel, probabilities: np.ndarray) -> Prediction:
        probabilities = probabilities / probabilities.sum()
        probabilities[-1] = 1.0 - probabilities[:-1].sum()  # exactly 1 in total
        index = int(np.argmax(probabilities))
        names = model.contract.class_names
        return Prediction(
            label=names[index],
            class_index=index,
            probabilities={n: float(p) for n, p in zip(names, probabilities)},
            model_version=model.version,
        )

    def close(self) -> None:
        """Stop the decoding threads."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
