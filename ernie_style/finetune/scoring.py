"""Scoring a stock `transformers` task export (what `ernie-style evaluate` runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import load_tasks
from ernie_style.finetune.encoder_families import stock_inputs
from ernie_style.finetune.evaluation import predict_split, write_predictions
from ernie_style.finetune.model import load_finetune_tokenizer


def stock_scorer(model: torch.nn.Module, task_type: str) -> Any:
    """A scorer (collated batch -> logits in the trainer's layout) for a stock model."""

    @torch.no_grad()
    def score(batch: dict[str, Any]) -> torch.Tensor:
        logits = model(**stock_inputs(model.config, batch)).logits.float()
        if task_type == "regression":
            return logits[:, 0]
        if task_type == "ranking":
            mask = batch["candidate_mask"]
            scores = logits[:, 0].view(mask.shape)
            return scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)
        return logits

    return score


def evaluate_export(
    model: torch.nn.Module,
    info: dict[str, Any],
    config: FinetuneConfig,
    model_dir: Path,
    splits: list[str] | None,
    predictions_dir: Path | None,
) -> dict[str, dict[str, float]]:
    """Metrics per split of the exported task `info["task"]` on the data `config` names."""
    name = info["task"]
    section = config.task(name)
    if section.type != info["type"]:
        raise ValueError(
            f"--task-config: task {name!r} is {section.type} there but the model is {info['type']}"
        )
    keep = {name} | ({section.silver_source} if section.silver_source else set())
    config = dataclasses.replace(config, tasks=[t for t in config.tasks if t.name in keep])
    tokenizer = load_finetune_tokenizer(config)
    task = load_tasks(config, tokenizer)[name]
    if task.labels and info.get("labels") and task.labels != info["labels"]:
        raise ValueError(
            f"--task-config: labels of {name!r} {task.labels} differ from the model's "
            f"{info['labels']}"
        )
    model.eval()
    scorer = stock_scorer(model, task.type)
    results = {}
    for split in splits or [s for s in ("dev", "test") if s in task.splits]:
        if split not in task.splits:
            raise ValueError(f"--split {split}: task {name!r} has no {split} data in the config")
        predicted = predict_split(task, split, scorer, config.batch_size_of(section))
        results[split] = predicted.metrics(section.metrics or [])
        if predictions_dir is not None:
            write_predictions(predictions_dir / f"{split}.jsonl", predicted)
    return results
