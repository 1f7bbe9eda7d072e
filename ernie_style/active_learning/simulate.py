"""`ernie-style al-simulate`: active-learning curves with oracle labels.

For every strategy and seed: fine-tune on the seed set (round 0), then R times score the
remaining pool with the round's model, select `budget` examples, add their oracle labels to every
task's training file and fine-tune again from the encoder. Each round's dev metrics land in
`OUTPUT/results.csv` (strategy, seed, round, labelled examples, task, split, metric, value) and
`OUTPUT/learning_curves.png` (each task's main metric against labelled examples, mean and
min-max spread over seeds, one line per strategy). Finished rounds are kept in
`OUTPUT/STRATEGY/seed-S/round-R/result.json`, so an interrupted simulation resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_style.active_learning.pool import ID_FIELD, Pool, encode_pool, read_pool
from ernie_style.active_learning.scoring import score_pool
from ernie_style.active_learning.selection import STRATEGIES, select
from ernie_style.config import load_config, option
from ernie_style.fileio import atomic_write, save_figure
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.readers import read_records

RESULT_FIELDS = ("strategy", "seed", "round", "labeled", "task", "split", "metric", "value")


@dataclass
class SimulationConfig:
    """An active-learning simulation: fine-tuning config, pool, oracle, rounds, strategies."""

    output_dir: str = option("runs/al_simulate", "results, curves and per-round models")
    finetune: str = option("", "fine-tuning YAML; its tasks' train files are the seed set")
    finetune_overrides: list[str] = option([], "key=value overrides of the fine-tuning config")
    pool: str = option("", "unlabeled pool (JSONL/CSV/TSV/datasets) with an id per example")
    oracle: str = option("", "directory with TASK.jsonl: the pool's labels (id + label field)")
    rounds: int = option(3, "selection rounds after the seed round")
    budget: int = option(40, "examples selected per round")
    strategies: list[str] = option(["random", "mt-avg"], "selection strategies to compare")
    seeds: list[int] = option([0], "seeds (selection and fine-tuning) per strategy")
    method: str = option("ec", "confidence: ec (entropy) or da (dropout agreement)")
    passes: int = option(10, "dropout passes for method da")
    weights: list[float] | None = option(None, "task weights for the mt-* strategies")
    keep_models: bool = option(False, "keep every round's fine-tuning run directory")

    def validate(self) -> None:
        """Check names and ranges; errors name the key."""
        for key in ("finetune", "pool", "oracle"):
            if not getattr(self, key):
                raise ValueError(f"{key}: required")
        if self.rounds < 0 or self.budget <= 0:
            raise ValueError("rounds must be >= 0 and budget > 0")
        for i, strategy in enumerate(self.strategies):
            if strategy not in STRATEGIES:
                raise ValueError(
                    f"strategies[{i}]: unknown {strategy!r}; choose from {', '.join(STRATEGIES)}"
                )
        if self.method not in ("ec", "da"):
            raise ValueError(f"method: {self.method!r} is not ec or da")
        if not self.seeds:
            raise ValueError("seeds: at least one seed")


def _read_jsonl_by_id(path: Path) -> dict[str, dict[str, Any]]:
    return {str(r[ID_FIELD]): r for _, r in read_records(path, [ID_FIELD])}


class Simulation:
    """Runs a `SimulationConfig`; `run()` returns the result rows."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.output = Path(config.output_dir)
        self.base = load_config(FinetuneConfig, config.finetune, config.finetune_overrides)
        self.pool: Pool = read_pool(config.pool)
        self.oracle = {
            task.name: _read_jsonl_by_id(Path(config.oracle) / f"{task.name}.jsonl")
            for task in self.base.tasks
        }
        for task, labels in self.oracle.items():
            missing = [i for i in self.pool.ids if i not in labels]
            if missing:
                raise ValueError(
                    f"oracle: {config.oracle}/{task}.jsonl has no label for pool ids {missing[:5]}"
                )
        self.seed_sets = {
            task.name: list(read_records(Path(task.data.train or ""), [ID_FIELD]))
            for task in self.base.tasks
        }

    def run(self) -> list[dict[str, Any]]:
        """Every strategy x seed x round; writes the CSV and the PNG."""
        rows: list[dict[str, Any]] = []
        for strategy in self.config.strategies:
            for seed in self.config.seeds:
                rows += self._curve(strategy, seed)
                self._write(rows)
        return rows

    def _curve(self, strategy: str, seed: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        acquired: list[str] = []
        for round_index in range(self.config.rounds + 1):
            work = self.output / strategy / f"seed-{seed}" / f"round-{round_index}"
            done = work / "result.json"
            if done.is_file():
                result = json.loads(done.read_text(encoding="utf-8"))
            else:
                result = self._round(work, strategy, seed, round_index, acquired)
                atomic_write(done, json.dumps(result, indent=1) + "\n")
            acquired = list(result["acquired"])
            rows += result["rows"]
        return rows

    def _round(
        self, work: Path, strategy: str, seed: int, round_index: int, acquired: Sequence[str]
    ) -> dict[str, Any]:
        from ernie_style.finetune.trainer import FinetuneTrainer

        config = self._round_config(work, seed, acquired)
        trainer = FinetuneTrainer(config)
        table = trainer.train()
        labeled = len(self.seed_sets[self.base.tasks[0].name]) + len(acquired)
        rows = [
            {
                "strategy": strategy,
                "seed": seed,
                "round": round_index,
                "labeled": labeled,
                "task": task,
                "split": split,
                "metric": metric,
                "value": value,
            }
            for task, splits in table.items()
            for split, values in splits.items()
            for metric, value in values.items()
        ]
        chosen: list[str] = []
        if round_index < self.config.rounds:
            chosen = self._choose(trainer, strategy, seed + 1000 * round_index, acquired)
        if not self.config.keep_models:
            shutil.rmtree(work / "model", ignore_errors=True)
        return {"rows": rows, "acquired": [*acquired, *chosen]}

    def _round_config(self, work: Path, seed: int, acquired: Sequence[str]) -> FinetuneConfig:
        """The fine-tuning config of a round: train files = seed set + oracle labels."""
        tasks = []
        for task in self.base.tasks:
            path = work / "labeled" / f"{task.name}.jsonl"
            lines = [json.dumps(r) for _, r in self.seed_sets[task.name]]
            lines += [json.dumps(self.oracle[task.name][i]) for i in acquired]
            atomic_write(path, "\n".join(lines) + "\n")
            data = dataclasses.replace(task.data, train=str(path))
            tasks.append(dataclasses.replace(task, data=data))
        return dataclasses.replace(
            self.base, tasks=tasks, seed=seed, output_dir=str(work / "model"), checkpoint_every=0
        )

    def _choose(self, trainer: Any, strategy: str, seed: int, acquired: Sequence[str]) -> list[str]:
        """Ids of the next batch from what is left of the pool."""
        taken = set(acquired)
        remaining = self.pool.subset([i for i, r in enumerate(self.pool.ids) if r not in taken])
        if len(remaining) == 0:
            return []
        names = [t.name for t in self.base.tasks]
        if strategy == "random":
            import numpy as np

            confidences = np.zeros((len(remaining), len(names)))
        else:
            encoded = {
                task.name: encode_pool(remaining, task, trainer.config, trainer.tokenizer)
                for task in trainer.config.tasks
            }
            scores = score_pool(
                trainer.unwrapped,
                trainer.tasks,
                encoded,
                method="da" if strategy == "st-da" else self.config.method,
                passes=self.config.passes,
                seed=seed,
                precision=trainer.config.precision,
                progress=False,
            )
            confidences = scores.confidences
        budget = min(self.config.budget, len(remaining))
        indices = select(confidences, budget, strategy, weights=self.config.weights, seed=seed)
        return [remaining.ids[int(i)] for i in indices]

    def _write(self, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.output / "results.csv", buffer.getvalue())
        main = {t.name: t.main_metric for t in self.base.tasks}
        plot_curves(rows, main, self.output / "learning_curves.png")


def plot_curves(rows: list[dict[str, Any]], main: dict[str, str | None], png: Path) -> Path:
    """Per task: dev main metric vs labelled examples, mean and spread over seeds per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(main)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            points: dict[int, list[float]] = {}
            for r in rows:
                if (r["strategy"], r["task"], r["split"], r["metric"]) == (
                    strategy,
                    task,
                    "dev",
                    main[task],
                ):
                    points.setdefault(int(r["labeled"]), []).append(float(r["value"]))
            if not points:
                continue
            xs = sorted(points)
            means = np.array([np.mean(points[x]) for x in xs])
            axis.plot(xs, means, marker="o", label=strategy)
            low = [min(points[x]) for x in xs]
            high = [max(points[x]) for x in xs]
            axis.fill_between(xs, low, high, alpha=0.15)
        axis.set_title(f"{task}: dev {main[task]}")
        axis.set_xlabel("labelled examples")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, png, dpi=110)
