"""Predict one image or every image of a folder, printing label and probabilities.

A model with a "neither" score also gets the score, and with the threshold an
exported version carries, its verdict: ``known`` at or under it, else ``neither``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from catdog.preprocessing import ImageError, preprocess
from training.data import IMAGE_EXTENSIONS, printable
from training.export import load_outputs

BATCH = 64


def predict_paths(model_path: str | Path, path: str | Path) -> Iterator[str]:
    """Yield one line per file: ``file  label  cat=p  dog=p`` (then ``ood=s known`` or
    ``ood=s neither`` for a model with a "neither" score), or the reason it failed."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    outputs, contract = load_outputs(model_path)
    threshold = (contract.extra.get("ood") or {}).get("threshold")
    for start in range(0, len(files), BATCH):
        batch, names = [], []
        for file in files[start : start + BATCH]:
            try:
                batch.append(preprocess(file, contract.image_size))
                names.append(file)
            except ImageError as exc:
                yield f"{printable(file)}  error: {exc.reason}"
        if not batch:
            continue
        out = outputs(np.stack(batch))
        ood = np.reshape(out["ood_score"], (-1,)) if "ood_score" in out else [None] * len(names)
        for file, probs, score in zip(names, out["probabilities"], ood):
            label = contract.class_names[int(np.argmax(probs))]
            scores = "  ".join(f"{n}={p:.4f}" for n, p in zip(contract.class_names, probs))
            line = f"{printable(file)}  {label}  {scores}"
            if score is not None:
                line += f"  ood={score:.3f}"
                if threshold is not None:
                    line += " known" if score <= threshold else " neither"
            yield line
