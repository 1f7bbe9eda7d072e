"""Scoring a fine-tuned task: predictions over a split, metrics, prediction files, tables.

Predictions per type: class names (classification types), a score (regression), the candidate
scores and their ranking (ranking), one tag per word (token classification; the tag predicted at
the word's first sub-token); tasks phrased as questions: the label pointed at, or the answer span
(`ernie_style.finetune.questions`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ernie_style.fileio import atomic_write
from ernie_style.finetune.config import ENTITY_METRICS
from ernie_style.finetune.data import IGNORE_INDEX, EncodedTask
from ernie_style.finetune.metrics import compute_metrics
from ernie_style.finetune.questions import collect_answers, question_metrics

#: Runs one collated batch, returns logits (CPU, float).
Scorer = Callable[[dict[str, Any]], torch.Tensor]


@dataclass
class SplitPredictions:
    """Everything a split's metrics and prediction file need."""

    task: EncodedTask
    split: str
    predictions: list[Any] = field(default_factory=list)  # per example, readable form
    references: list[Any] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)  # what the metrics take (ids, scores, lists)
    raw_references: list[Any] = field(default_factory=list)

    def metrics(self, names: Sequence[str]) -> dict[str, float]:
        """The named metrics over this split."""
        task = self.task
        if task.is_question:
            return question_metrics(task.type, names, self.raw, self.raw_references)
        if task.type == "token_classification":
            return _token_metrics(names, self.raw, self.raw_references, task.labels or [])
        options = {}
        if "f1_binary" in names:
            options["pos_label"] = 1
        return compute_metrics(names, self.raw, self.raw_references, **options)

    def majority_metrics(self, names: Sequence[str]) -> dict[str, float] | None:
        """The named metrics of always answering this split's most common label (every token
        its most common tag): the baseline a classifier's figures are read against. None for
        regression, ranking and question types, which have no majority class."""
        task, references = self.task, self.raw_references
        if not references or task.is_question:
            return None
        if task.type == "token_classification":
            common = Counter(tag for row in references for tag in row).most_common(1)[0][0]
            constant = [[common] * len(row) for row in references]
            return _token_metrics(names, constant, references, task.labels or [])
        if task.type not in ("classification", "pair_classification"):
            return None
        common = Counter(references).most_common(1)[0][0]
        options = {"pos_label": 1} if "f1_binary" in names else {}
        return compute_metrics(names, [common] * len(references), references, **options)


def predict_split(
    task: EncodedTask, split: str, scorer: Scorer, batch_size: int
) -> SplitPredictions:
    """Score every example of `task`'s `split` in file order."""
    examples = task.splits[split]
    out = SplitPredictions(task, split)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = task.collator(chunk)
        logits = scorer(batch).float().cpu()
        if task.is_question:
            rows = collect_answers(task.type, logits, batch, chunk, task.labels or [])
            for prediction, reference, raw, raw_reference in rows:
                out.predictions.append(prediction)
                out.references.append(reference)
                out.raw.append(raw)
                out.raw_references.append(raw_reference)
            continue
        _collect(out, task, batch, logits)
    return out


def _collect(out: SplitPredictions, task: EncodedTask, batch: dict, logits: torch.Tensor) -> None:
    labels = batch["labels"]
    names = task.labels or []
    if task.type in ("classification", "pair_classification"):
        ids = logits.argmax(-1).tolist()
        out.raw += ids
        out.raw_references += labels.tolist()
        out.predictions += [names[i] for i in ids]
        out.references += [names[i] for i in labels.tolist()]
    elif task.type == "regression":
        scores = logits.reshape(-1).tolist()
        out.raw += scores
        out.raw_references += labels.tolist()
        out.predictions += scores
        out.references += labels.tolist()
    elif task.type == "ranking":
        mask = batch["candidate_mask"]
        for row in range(logits.shape[0]):
            count = int(mask[row].sum())
            scores = logits[row, :count].tolist()
            relevance = labels[row, :count].tolist()
            out.raw.append(scores)
            out.raw_references.append(relevance)
            order = sorted(range(count), key=lambda j: -scores[j])
            out.predictions.append({"scores": scores, "ranking": order})
            out.references.append(relevance)
    else:
        tags = logits.argmax(-1)
        for row in range(tags.shape[0]):
            keep = labels[row] != IGNORE_INDEX
            predicted, gold = tags[row][keep].tolist(), labels[row][keep].tolist()
            out.raw.append(predicted)
            out.raw_references.append(gold)
            out.predictions.append([names[i] for i in predicted])
            out.references.append([names[i] for i in gold])


def _token_metrics(
    names: Sequence[str], predicted: list[list[int]], gold: list[list[int]], labels: list[str]
) -> dict[str, float]:
    results: dict[str, float] = {}
    entity = [n for n in names if n in ENTITY_METRICS]
    flat = [n for n in names if n not in ENTITY_METRICS]
    if entity:
        results |= compute_metrics(
            entity,
            [[labels[i] for i in row] for row in predicted],
            [[labels[i] for i in row] for row in gold],
        )
    if flat:
        results |= compute_metrics(
            flat, [i for row in predicted for i in row], [i for row in gold for i in row]
        )
    return {n: results[n] for n in names}


def write_predictions(path: Path, predictions: SplitPredictions) -> None:
    """One JSON line per example: its source location, prediction and reference (atomic)."""
    locations = predictions.task.locations.get(predictions.split, [])
    lines = []
    for i, (pred, ref) in enumerate(
        zip(predictions.predictions, predictions.references, strict=True)
    ):
        row = {"index": i, "source": locations[i] if i < len(locations) else None}
        lines.append(json.dumps(row | {"prediction": pred, "reference": ref}, ensure_ascii=False))
    atomic_write(path, "\n".join(lines) + "\n")


def metrics_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
    baselines: Mapping[str, Mapping[str, float] | None] | None = None,
) -> str:
    """Markdown table: one row per task and metric (only the task's own metrics), one column
    per split, so every figure appears once and dev and test sit side by side; with
    `baselines` (task -> the test metrics of always answering the majority label), a last
    column holds them beside the figures they are read against."""
    splits = list(dict.fromkeys(split for per_task in results.values() for split in per_task))
    columns = [*splits, "test, majority label"] if baselines is not None else splits
    lines = ["| task | metric | " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * (len(columns) + 2))
    for task, per_task in results.items():
        names = dict.fromkeys(name for values in per_task.values() for name in values)
        for name in names:
            cells = [
                f"{per_task[split][name]:.4f}" if name in per_task.get(split, {}) else ""
                for split in splits
            ]
            if baselines is not None:
                baseline = baselines.get(task) or {}
                cells.append(f"{baseline[name]:.4f}" if name in baseline else "n/a")
            lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
