"""Pictures for humans: a batch grid, training curves, a confusion matrix (PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save_batch_grid(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    columns: int = 8,
) -> Path:
    """Save a grid of a batch of [0, 1] images titled with their (one-hot) labels."""
    count = len(images)
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(class_names[int(np.argmax(label))], fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_history_plot(history: dict[str, list], path: str | Path) -> Path:
    """Save loss and accuracy curves, training and validation, side by side.

    Epochs are whole numbers on the x axis; a dotted line marks where a new
    phase (e.g. fine-tuning) starts when ``history["phase"]`` is given.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    phases = history.get("phase") or []
    starts = [i + 1 for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = history.get(prefix + metric)
            if values:
                label = f"{prefix or 'train_'}{metric}"
                ax.plot(epochs[: len(values)], values, style, label=label)
        for start in starts:
            ax.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                phases[start - 1],
                (start - 0.5, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def save_confusion_plot(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path
) -> Path:
    """Save a confusion matrix (rows: true class, columns: predicted class).

    Each count is written in black or white, whichever contrasts more with the
    colour of its own cell, so every number stays readable.
    """
    values = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    cmap = plt.get_cmap("Blues")
    norm = Normalize(vmin=0, vmax=max(1, int(values.max())))
    ax.imshow(values, cmap=cmap, norm=norm)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, str(value), ha="center", va="center", color=text_colour(cmap(norm(value))))
    fig.tight_layout()
    return _save(fig, path)


def text_colour(background: Sequence[float]) -> str:
    """``black`` or ``white``: whichever reads better on an RGB(A) colour in [0, 1]."""
    r, g, b = background[:3]
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b  # Rec. 709 weights
    return "black" if luminance > 0.45 else "white"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
