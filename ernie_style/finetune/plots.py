"""Learning curves of a fine-tuning run: each task's dev main metric and the average, by epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.tmp-{os.getpid()}.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, png)
    return png
