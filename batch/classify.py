"""One Ray actor's work: a batch of listed files in, one row per file out.

Each actor loads the model once (``app.core.registry.load_version``: the service's
loading and warm-up, through ``catdog.runtimes``, one interpreter with one thread
per actor), then for each batch reads every file through the source's pyarrow
filesystem, decodes it with ``catdog.preprocessing.preprocess`` under the
service's limits (``Limits``, from ``app.core.config.Settings``), runs the files
that decoded through the model in one call, and turns each output into the
service's answer (``app.core.service.classification``). So a row's probabilities
are what ``/predict`` answers for the same file. A file that cannot be read, is
over the byte limit, is not an accepted format, is too many pixels or does not
decode gets a row whose ``error`` says why; the batch goes on. Each row also says
which Ray node classified it (``node``, counted in the summary, not written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from app.core.config import Settings
from app.core.registry import load_version
from app.core.service import classification
from batch.source import Source
from catdog.preprocessing import ImageError, preprocess

NODE = "node"  # the column naming the Ray node (the first 8 hex digits of its id)


@dataclass(frozen=True)
class Limits:
    """What the service refuses, applied to every file: bytes, pixels and formats."""

    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]

    @classmethod
    def of_service(cls, settings: Settings | None = None) -> Limits:
        """The service's limits (its defaults, or its ``CATDOG_*`` variables if set)."""
        settings = settings or Settings()
        return cls(settings.max_upload_bytes, settings.max_pixels, settings.image_formats)


def row_schema(class_names: tuple[str, ...]) -> pa.Schema:
    """The columns of the output: path, label, a probability per class, known,
    ood_score, model_version, error."""
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            *[(name, pa.float64()) for name in class_names],
            ("known", pa.bool_()),
            ("ood_score", pa.float64()),
            ("model_version", pa.string()),
            ("error", pa.string()),
        ]
    )


class Classifier:
    """The callable class Ray Data runs in each actor of the pool (``map_batches``)."""

    def __init__(self, version_dir: str, runtime: str, source: Source, limits: Limits) -> None:
        # Warmed up at batch 1 only: the service's warm-up of every size up to the batch
        # would cost seconds per actor; the first batch sizes the interpreter once.
        self.model = load_version(Path(version_dir), runtime, threads=1)
        self.source = source
        self.limits = limits
        node = pa.field(NODE, pa.string())
        self.schema = row_schema(self.model.contract.class_names).append(node)
        self.node = ray.get_runtime_context().get_node_id()[:8]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows for a batch of the listing (columns ``path``, ``size``)."""
        paths = batch.column("path").to_pylist()
        sizes = batch.column("size").to_pylist()
        errors: list[str | None] = [None] * len(paths)
        pixels: list[np.ndarray] = []
        decoded: list[int] = []
        for i, (path, size) in enumerate(zip(paths, sizes)):
            try:
                pixels.append(self._decode(path, size))
                decoded.append(i)
            except (ImageError, OSError) as exc:
                errors[i] = _reason(exc)
        answers = {}
        if pixels:
            results = self.model.infer_rows(np.stack(pixels))
            answers = {i: classification(self.model, r) for i, r in zip(decoded, results)}
        return self._rows(paths, answers, errors)

    def _decode(self, path: str, size: int | None) -> np.ndarray:
        if size is None or size <= self.limits.max_bytes:  # unknown: read, then check
            data = self.source.read(path)
            size = len(data)
        if size > self.limits.max_bytes:
            limit = self.limits.max_bytes
            raise ImageError(f"file of {size} bytes exceeds the upload limit of {limit} bytes")
        return preprocess(
            data,
            self.model.contract.image_size,
            max_pixels=self.limits.max_pixels,
            formats=self.limits.formats,
        )

    def _rows(self, paths: list[str], answers: dict, errors: list[str | None]) -> pa.Table:
        names = self.model.contract.class_names
        got = [answers.get(i) for i in range(len(paths))]
        columns: dict[str, list] = {
            "path": [self.source.shown(p) for p in paths],
            "label": [a and a.label for a in got],
            **{n: [a and a.probabilities[n] for a in got] for n in names},
            "known": [a and a.known for a in got],
            "ood_score": [a and a.ood_score for a in got],
            "model_version": [self.model.version] * len(paths),
            "error": errors,
            NODE: [self.node] * len(paths),
        }
        return pa.table(columns, schema=self.schema)


def _reason(exc: ImageError | OSError) -> str:
    """The error column: an image error's own reason, or what reading the file said."""
    if isinstance(exc, ImageError):
        return exc.reason
    return f"cannot read the file: {exc.strerror or exc}"
