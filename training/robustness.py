"""The robustness suite: the test split as real photos differ from it, per transform and class.

Each transform turns a test photo (Pillow image) into another photo, which is
saved as a JPEG (quality 95, or 30 for the compression transform) and then goes
through THE preprocessing (``catdog.preprocessing.preprocess``) like an upload
to the service. ``original`` feeds the files as they are. The report per
transform is the usual one (accuracy overall and per class, confusion matrix)
plus, for a model with an OOD score, the share of these photos flagged as neither.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from catdog.contract import ModelContract
from catdog.preprocessing import preprocess, to_rgb
from training.data import readable_images
from training.evaluate import classification_report, ood_summary
from training.export import Outputs, load_outputs

Transform = Callable[[Image.Image], Image.Image]
BLACK = (0, 0, 0)


def letterbox(image: Image.Image, size: tuple[int, int] = (480, 320)) -> Image.Image:
    """Fit the photo inside a (width, height) canvas, black bars filling the rest."""
    scale = min(size[0] / image.width, size[1] / image.height)
    fitted = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    canvas = Image.new("RGB", size, BLACK)
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return canvas


def centre_crop(image: Image.Image, aspect: float) -> Image.Image:
    """The largest centred crop with width / height = ``aspect``."""
    width, height = image.size
    if width / height > aspect:
        new = round(height * aspect)
        left = (width - new) // 2
        return image.crop((left, 0, left + new, height))
    new = round(width / aspect)
    top = (height - new) // 2
    return image.crop((0, top, width, top + new))


def down_up(image: Image.Image, factor: float = 1 / 3) -> Image.Image:
    """Shrink by ``factor`` and enlarge back: the detail a small thumbnail lost."""
    small = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.BILINEAR)


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Turn by ``degrees`` (counter-clockwise) within the same frame, black corners."""
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=BLACK)


def lighting(image: Image.Image, factor: float) -> Image.Image:
    """Darker (< 1) or brighter (> 1)."""
    return ImageEnhance.Brightness(image).enhance(factor)


# name -> (transform, JPEG quality it is saved at); None: the test file as it is.
TRANSFORMS: dict[str, tuple[Transform | None, int]] = {
    "original": (None, 0),
    "letterbox 480x320": (letterbox, 95),
    "crop 3:2": (lambda im: centre_crop(im, 3 / 2), 95),
    "crop 4:3": (lambda im: centre_crop(im, 4 / 3), 95),
    "down-up x1/3": (down_up, 95),
    "jpeg q30": (lambda im: im, 30),
    "rotate +15": (lambda im: rotate(im, 15), 95),
    "rotate -15": (lambda im: rotate(im, -15), 95),
    "darker x0.6": (lambda im: lighting(im, 0.6), 95),
    "brighter x1.4": (lambda im: lighting(im, 1.4), 95),
}


def transformed_bytes(path: str | Path, name: str) -> bytes:
    """The file at ``path`` after transform ``name``, as the bytes an upload would carry."""
    transform, quality = TRANSFORMS[name]
    data = Path(path).read_bytes()
    if transform is None:
        return data
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        out = transform(to_rgb(image))  # upright, alpha on white: as the service sees it
        out.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def transformed_batches(
    paths: Sequence[str], name: str, size: tuple[int, int], batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    """Preprocessed batches of the transformed images, in path order."""

    def load(path: str) -> np.ndarray:
        return preprocess(transformed_bytes(path, name), size)

    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), batch_size):
            yield np.stack(list(pool.map(load, paths[start : start + batch_size])))


def run_transform(
    outputs: Outputs,
    contract: ModelContract,
    paths: Sequence[str],
    labels: np.ndarray,
    name: str,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, Any]:
    """Report for one transform over the given photos."""
    predictions, scores = [], []
    for batch in transformed_batches(paths, name, contract.image_size, batch_size, workers):
        out = outputs(batch)
        predictions.append(np.argmax(out["probabilities"], axis=1))
        if "ood_score" in out:
            scores.append(np.reshape(out["ood_score"], (-1,)))
    report = classification_report(labels, np.concatenate(predictions), contract.class_names)
    threshold = (contract.extra.get("ood") or {}).get("threshold")
    if threshold is not None and scores:
        report["ood"] = ood_summary(np.concatenate(scores), threshold)
    return report


def run_suite(
    model_path: str | Path,
    data_dir: str | Path,
    transforms: Sequence[str] = tuple(TRANSFORMS),
    limit: int | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """Every transform's report for one model over labelled photos (e.g. the test split;
    any layout ``list_images`` reads). ``limit`` keeps about that many photos, evenly
    spread. Files that do not decode are left out; each report lists them (``skipped``).
    """
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {unknown}; choose from {list(TRANSFORMS)}")
    outputs, contract = load_outputs(model_path)
    paths, labels, skipped = readable_images(
        data_dir, contract.class_names, limit, contract.image_size
    )
    suite = {}
    for name in transforms:
        suite[name] = run_transform(outputs, contract, paths, labels, name, batch_size)
        suite[name]["skipped"] = skipped
    return suite


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A Markdown table: one row per transform, accuracy overall/per class for each model.

    ``results`` maps a model label to ``run_suite``'s result. A model with an
    OOD score also gets a column for the share of photos flagged as neither.
    """
    models = list(results)
    first = results[models[0]]
    classes = list(next(iter(first.values()))["per_class"])
    header, rule = ["transform"], ["---"]
    for model in models:
        header += [f"{model} all", *(f"{model} {c}" for c in classes)]
        if "ood" in next(iter(results[model].values())):
            header.append(f"{model} flagged")
    rule = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    for name in first:
        row = [name]
        for model in models:
            report = results[model][name]
            row.append(f"{report['accuracy']:.2%}")
            row += [f"{report['per_class'][c]['accuracy']:.2%}" for c in classes]
            if "ood" in report:
                row.append(f"{report['ood']['flagged_share']:.2%}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def save_results(results: dict[str, dict[str, dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """Write ``robustness.json`` and ``robustness.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "robustness.md").write_text(format_table(results) + "\n")
    return [out / "robustness.json", out / "robustness.md"]
