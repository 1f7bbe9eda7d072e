"""Run logging: TensorBoard scalars, and the forgetting monitor (held-out loss and accuracy of
every task seen so far) as a CSV plus a PNG plot with stage boundaries marked."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ernie_style.fileio import save_figure

HELDOUT_CSV = "heldout.csv"
HELDOUT_PNG = "heldout_loss.png"
TRAIN_CSV = "train_loss.csv"
#: train_loss.csv: one row per task and step, the same columns for pretraining (stage set,
#: epoch empty) and fine-tuning (epoch set, stage empty).
TRAIN_FIELDS = ["step", "stage", "epoch", "task", "loss"]
#: The columns train_loss.csv had before (fine-tuning wrote its epoch under `stage`).
_OLD_TRAIN_FIELDS = ["step", "stage", "task", "loss", "accuracy"]
_HELDOUT_FIELDS = ["step", "stage", "task", "loss", "accuracy", "majority"]


class RunLogger:
    """Writes TensorBoard events and CSVs under the run directory (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool = True, phase: str = "stage") -> None:
        """`phase`: what the run's phases are ("stage" or "epoch"), i.e. what the `stage`
        column of a train_loss.csv written before the columns were unified held; such a file
        is upgraded here, once, before the run appends to it."""
        self.run_dir = run_dir
        self.enabled = enabled
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _upgrade_train_csv(run_dir / TRAIN_CSV, phase)

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log scalars to TensorBoard (`train/loss/knowledge_masking`, `lr`, ...)."""
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def train_losses(
        self, step: int, stage: int | str, epoch: int | str, losses: Mapping[str, float]
    ) -> None:
        """Append per-task training losses of one step to train_loss.csv (full precision: the
        shortest text that reads back as the same float, so logs compare bit for bit)."""
        if self.enabled:
            rows = [[step, stage, epoch, task, repr(float(loss))] for task, loss in losses.items()]
            _append_csv(self.run_dir / TRAIN_CSV, rows, TRAIN_FIELDS)

    def heldout(self, step: int, stage: int, results: Mapping[str, Mapping[str, float]]) -> None:
        """Record one held-out evaluation (task -> loss/accuracy/majority) in CSV and
        TensorBoard; `majority` is the accuracy of always answering the most common target, the
        baseline the accuracy is read against."""
        if not self.enabled:
            return
        rows = [
            [step, stage, task, *(repr(float(r[key])) for key in ("loss", "accuracy", "majority"))]
            for task, r in results.items()
        ]
        _append_csv(self.run_dir / HELDOUT_CSV, rows, _HELDOUT_FIELDS)
        for task, r in results.items():
            extra = {k: v for k, v in r.items() if k not in ("loss", "accuracy", "majority")}
            self.scalars(
                step,
                {
                    f"heldout/{task}/loss": r["loss"],
                    f"heldout/{task}/acc": r["accuracy"],
                    f"heldout/{task}/majority_baseline": r["majority"],
                    **{f"heldout/{task}/{name}": value for name, value in extra.items()},
                },
            )

    def plot_heldout(self, stage_starts: Sequence[int]) -> Path | None:
        """Redraw heldout_loss.png from heldout.csv; returns its path."""
        if not self.enabled:
            return None
        return plot_heldout(self.run_dir / HELDOUT_CSV, self.run_dir / HELDOUT_PNG, stage_starts)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()


def _upgrade_train_csv(path: Path, phase: str) -> None:
    """Rewrite a train_loss.csv of the old column layout (a run resumed across versions) in
    the current one, atomically; its `stage` column held the run's `phase` (fine-tuning wrote
    its epoch there)."""
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != _OLD_TRAIN_FIELDS:
        return
    epochs = phase == "epoch"
    upgraded = [TRAIN_FIELDS]
    for step, stage, task, loss, _ in rows[1:]:
        upgraded.append([step, "", stage, task, loss] if epochs else [step, stage, "", task, loss])
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(upgraded)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_csv(path: Path, rows: list[list], fields: Sequence[str]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(fields)
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def read_heldout(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Per task: (step, loss, accuracy) rows of a heldout.csv, in step order; a row repeated
    for the same step (a run resumed from before it was written) keeps the last copy."""
    by_task: dict[str, dict[int, tuple[float, float]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_task.setdefault(row["task"], {})[int(row["step"])] = (
                float(row["loss"]),
                float(row["accuracy"]),
            )
    return {t: [(s, *v) for s, v in sorted(rows.items())] for t, rows in by_task.items()}


def plot_heldout(csv_path: Path, png_path: Path, stage_starts: Sequence[int]) -> Path | None:
    """Per-task held-out loss against step, with dashed lines at stage boundaries."""
    if not csv_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_heldout(csv_path)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for task, rows in series.items():
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", ms=3, label=task)
    for k, start in enumerate(stage_starts):
        if k:
            ax.axvline(start, color="grey", ls="--", lw=0.8)
            ax.text(start, 1.0, f" stage {k + 1}", transform=ax.get_xaxis_transform(), va="top")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss")
    ax.set_title("Forgetting monitor: held-out loss per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, png_path)
