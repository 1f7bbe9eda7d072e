"""Tables and plots of `ernie2_comparisons.py`'s summary.json (for docs/results.md).

.venv/bin/python experiments/report.py runs/experiments/ernie2/summary.json OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

#: The main metric reported per downstream task (the first metric of its config).
MAIN = {
    "wnut16": "entity_f1",
    "sentiment": "accuracy",
    "doc_similarity": "pearson",
    "wiki_pairs": "accuracy",
    "wiki_ranking": "mrr",
}


def _by_variant(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for key, entry in summary["runs"].items():
        out.setdefault(key.split("/")[0], []).append(entry)
    return out


def finetune_scores(summary: dict[str, Any], split: str = "test") -> dict[str, dict[str, list]]:
    """Variant -> task -> every (pretraining seed x fine-tuning seed) main-metric value."""
    scores: dict[str, dict[str, list]] = {}
    for variant, entries in _by_variant(summary).items():
        for entry in entries:
            for metrics in entry["finetune"].values():
                for task, metric in MAIN.items():
                    if task in metrics and split in metrics[task]:
                        value = metrics[task][split][metric]
                        scores.setdefault(variant, {}).setdefault(task, []).append(value)
    return scores


def finetune_table(summary: dict[str, Any], split: str = "test") -> str:
    """Markdown: variant x task, mean ± std of the main metric."""
    scores = finetune_scores(summary, split)
    lines = ["| variant | " + " | ".join(f"{t} ({m})" for t, m in MAIN.items()) + " | n |"]
    lines.append("|" + "---|" * (len(MAIN) + 2))
    for variant, tasks in scores.items():
        cells = [
            f"{mean(tasks[t]):.3f} ± {pstdev(tasks[t]):.3f}" if t in tasks else "" for t in MAIN
        ]
        count = len(next(iter(tasks.values()))) if tasks else 0
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {count} |")
    return "\n".join(lines) + "\n"


def forgetting_table(summary: dict[str, Any]) -> str:
    """Markdown: variant x pretraining task, final held-out loss (accuracy), mean over seeds."""
    tasks: list[str] = []
    for entry in summary["runs"].values():
        tasks += [t for t in entry["forgetting"] if t not in tasks]
    lines = ["| variant | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for variant, entries in _by_variant(summary).items():
        cells = []
        for task in tasks:
            values = [e["forgetting"][task] for e in entries if task in e["forgetting"]]
            if not values:
                cells.append("-")
                continue
            loss = mean(v["loss"] for v in values)
            accuracy = mean(v["accuracy"] for v in values)
            cells.append(f"{loss:.3f} ({accuracy:.2f})")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_finetune(summary: dict[str, Any], png: Path) -> Path:
    """Grouped bars: downstream test main metric per task, one bar per variant (± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scores = finetune_scores(summary)
    variants = list(scores)
    x = np.arange(len(MAIN))
    width = 0.8 / max(len(variants), 1)
    figure, axis = plt.subplots(figsize=(9, 4))
    for i, variant in enumerate(variants):
        means = [mean(scores[variant].get(t, [np.nan])) for t in MAIN]
        stds = [pstdev(scores[variant].get(t, [0.0])) for t in MAIN]
        axis.bar(x + i * width, means, width, yerr=stds, capsize=3, label=variant)
    axis.set_xticks(x + width * (len(variants) - 1) / 2)
    axis.set_xticklabels([f"{t}\n{m}" for t, m in MAIN.items()], fontsize=8)
    axis.set_ylabel("test main metric")
    axis.set_title("Downstream fine-tuning by pretraining variant (mean ± std over seeds)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png


def write_report(summary_path: Path, out: Path) -> Path:
    """report.md (both tables) and finetune_by_variant.png next to the summary."""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    plot_finetune(summary, out / "finetune_by_variant.png")
    text = "## Downstream (test, main metric)\n\n" + finetune_table(summary)
    text += "\n## Forgetting: final held-out loss (accuracy) per pretraining task\n\n"
    text += forgetting_table(summary)
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1]), Path(sys.argv[2])).read_text(encoding="utf-8"))
