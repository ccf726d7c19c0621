"""Evaluate a model on a folder of labelled photos: overall and per-class accuracy.

The folder is a split's (``cat/``, ``dog/``) or raw photos in either Kaggle
layout (``training.data.list_images``); files that do not decode are left out
and listed in the report.

The tutorial reported cats and dogs separately; per-class accuracy here is the
share of each true class predicted correctly (its recall). The confusion
matrix has true classes as rows and predicted classes as columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from catdog.contract import CLASS_NAMES
from training.data import make_dataset, printable
from training.export import Outputs, Predictor, load_outputs
from training.visualize import save_confusion_plot

SHOW_SKIPPED = 10  # unreadable files named in the printed report


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, Any]:
    """Accuracy overall and per class, precision per class, and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = len(class_names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        support, predicted = int(matrix[i].sum()), int(matrix[:, i].sum())
        per_class[name] = {
            "count": support,
            "correct": int(matrix[i, i]),
            "accuracy": matrix[i, i] / support if support else None,
            "precision": matrix[i, i] / predicted if predicted else None,
        }
    total = int(matrix.sum())
    return {
        "count": total,
        "accuracy": float(np.trace(matrix) / total) if total else None,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }


def evaluate_predictor(
    predict: Predictor, dataset: tf.data.Dataset, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, Any]:
    """Run a predictor over a (images, one-hot labels) dataset and report."""
    return evaluate_outputs(lambda x: {"probabilities": predict(x)}, dataset, class_names)


def evaluate_outputs(
    outputs: Outputs,
    dataset: tf.data.Dataset,
    class_names: Sequence[str] = CLASS_NAMES,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Like ``evaluate_predictor`` for a model's outputs by name; with an ``ood_score``
    output and its ``threshold``, also the share of these images flagged as neither."""
    y_true, y_pred, scores = [], [], []
    for images, labels in dataset:
        out = outputs(images.numpy())
        y_pred.append(np.argmax(out["probabilities"], axis=1))
        y_true.append(np.argmax(labels.numpy(), axis=1))
        if "ood_score" in out:
            scores.append(np.reshape(out["ood_score"], (-1,)))
    report = classification_report(np.concatenate(y_true), np.concatenate(y_pred), class_names)
    if threshold is not None and scores:
        report["ood"] = ood_summary(np.concatenate(scores), threshold)
    return report


def ood_summary(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """How many images score above the threshold (are flagged as neither cat nor dog)."""
    flagged = int(np.sum(scores > threshold))
    return {
        "threshold": threshold,
        "flagged": flagged,
        "flagged_share": flagged / len(scores) if len(scores) else None,
    }


def evaluate(
    model_path: str | Path,
    data_dir: str | Path,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    backbone_size: int | None = None,
    tta: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint or exported model; write evaluation.json and confusion.png.

    For an exported model with an OOD score, the report also counts the images
    flagged as neither cat nor dog (``ood``). A checkpoint can be evaluated with
    its backbone at another size and with mirror averaging, as it would be exported.
    """
    outputs, contract = load_outputs(model_path, backbone_size, tta)
    dataset = make_dataset(
        data_dir,
        contract.image_size,
        batch_size,
        cache=False,
        class_names=contract.class_names,
        skip_unreadable=True,
    )
    threshold = (contract.extra.get("ood") or {}).get("threshold")
    report = evaluate_outputs(outputs, dataset, contract.class_names, threshold)
    report.update(model=str(model_path), data=str(data_dir))
    report["skipped"] = dataset.skipped
    if backbone_size or tta:
        report.update(backbone_size=backbone_size, tta=tta)
    model_path = Path(model_path)
    out = (
        Path(out_dir)
        if out_dir
        else (
            model_path.parent / f"evaluation-{Path(data_dir).name}{_variant(backbone_size, tta)}"
            if model_path.suffix == ".keras"
            else Path("runs") / "evaluate" / f"{model_path.parent.name}-{model_path.name}"
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    save_confusion_plot(report["confusion_matrix"], contract.class_names, out / "confusion.png")
    report["outputs"] = [str(out / "evaluation.json"), str(out / "confusion.png")]
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines: overall, per class, confusion matrix, output files."""
    names = report["class_names"]
    lines = [f"accuracy {report['accuracy']:.4f} on {report['count']} images"]
    for name, stats in report["per_class"].items():
        acc = "n/a" if stats["accuracy"] is None else f"{stats['accuracy']:.4f}"
        lines.append(f"  {name:<6} accuracy {acc} ({stats['correct']}/{stats['count']})")
    lines.append("confusion matrix (rows true, columns predicted): " + " ".join(names))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"  {name:<6} " + " ".join(f"{v:>6}" for v in row))
    if "ood" in report:
        ood = report["ood"]
        lines.append(
            f"flagged as neither: {ood['flagged']}/{report['count']} "
            f"({ood['flagged_share']:.2%}) above threshold {ood['threshold']:.4g}"
        )
    skipped = report.get("skipped") or []
    if skipped:
        lines.append(f"left out {len(skipped)} files that do not decode:")
        lines += [f"  {printable(s['path'])}: {s['reason']}" for s in skipped[:SHOW_SKIPPED]]
        if len(skipped) > SHOW_SKIPPED:
            lines.append(f"  and {len(skipped) - SHOW_SKIPPED} more (evaluation.json lists all)")
    lines += [f"wrote {p}" for p in report.get("outputs", [])]
    return "\n".join(lines)


def _variant(backbone_size: int | None, tta: bool) -> str:
    """The folder suffix of a checkpoint evaluated as a variant: ``-320``, ``-tta``."""
    return (f"-{backbone_size}" if backbone_size else "") + ("-tta" if tta else "")
