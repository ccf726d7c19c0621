"""Pictures: whole-number epoch ticks on the curves, readable counts in the confusion matrix.

* The history plot's x ticks are whole epochs, even for a 3-epoch run.
* Each confusion count is drawn in the colour that contrasts with its own
  cell: black on light cells, white on dark ones, for large and small counts.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from training import visualize


def test_history_ticks_are_whole_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    monkeypatch.setattr(visualize, "_save", lambda fig, path: figures.append(fig) or Path(path))
    history = {
        "loss": [0.9, 0.5, 0.4],
        "val_loss": [0.8, 0.6, 0.5],
        "accuracy": [0.6, 0.8, 0.85],
        "val_accuracy": [0.65, 0.75, 0.8],
        "phase": ["head", "fine-tune", "fine-tune"],
    }
    visualize.save_history_plot(history, tmp_path / "h.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert any(text.get_text() == "fine-tune" for text in ax.texts)
    plt.close(figures[0])


@pytest.mark.parametrize("matrix", [[[1211, 39], [26, 1224]], [[3, 0], [1, 2]], [[0, 0], [0, 0]]])
def test_confusion_counts_contrast_with_their_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, matrix: list[list[int]]
) -> None:
    figures = []
    monkeypatch.setattr(visualize, "_save", lambda fig, path: figures.append(fig) or Path(path))
    visualize.save_confusion_plot(matrix, ["cat", "dog"], tmp_path / "c.png")
    ax = figures[0].axes[0]
    image = ax.get_images()[0]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            text = texts[(i, j)]
            assert text.get_text() == str(value)
            cell = image.cmap(image.norm(value))
            assert text.get_color() == visualize.text_colour(cell)
            # The chosen colour is the one farther from the cell's brightness.
            brightness = 0.2126 * cell[0] + 0.7152 * cell[1] + 0.0722 * cell[2]
            assert abs(brightness - (1.0 if text.get_color() == "white" else 0.0)) >= 0.45
    plt.close(figures[0])


def test_pictures_are_written(tmp_path: Path) -> None:
    out = visualize.save_confusion_plot([[5, 1], [2, 4]], ["cat", "dog"], tmp_path / "c.png")
    assert out.stat().st_size > 1000
