"""Predict one image or every image of a folder, printing label and probabilities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from catdog.preprocessing import ImageError, preprocess
from training.data import IMAGE_EXTENSIONS
from training.export import load_predictor

BATCH = 64


def predict_paths(model_path: str | Path, path: str | Path) -> Iterator[str]:
    """Yield one line per file: ``file  label  cat=p  dog=p`` (or the reason it failed)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    predict, contract = load_predictor(model_path)
    for start in range(0, len(files), BATCH):
        batch, names = [], []
        for file in files[start : start + BATCH]:
            try:
                batch.append(preprocess(file, contract.image_size))
                names.append(file)
            except ImageError as exc:
                yield f"{file}  error: {exc.reason}"
        if not batch:
            continue
        probabilities = predict(np.stack(batch))
        for file, probs in zip(names, probabilities):
            label = contract.class_names[int(np.argmax(probs))]
            scores = "  ".join(f"{n}={p:.4f}" for n, p in zip(contract.class_names, probs))
            yield f"{file}  {label}  {scores}"
