"""Learning curves of a fine-tuning run: each task's dev main metric and the average, by epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ernie_style.fileio import save_figure


def plot_learning_curves(history: Sequence[dict[str, Any]], png: Path) -> Path | None:
    """Write the PNG (atomically); None when there is nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in history]
    figure, axis = plt.subplots(figsize=(7, 4))
    tasks = sorted({t for record in history for t in record["dev"]})
    for task in tasks:
        points = [(r["epoch"], r["dev"][task]["main"]) for r in history if task in r["dev"]]
        axis.plot(*zip(*points, strict=True), marker="o", label=task)
    axis.plot(epochs, [r["score"] for r in history], "k--", linewidth=2, label="average")
    axis.set_xlabel("epoch")
    axis.set_ylabel("dev main metric")
    axis.set_title("Multi-task fine-tuning: dev metrics")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, png, dpi=110)
