"""Per-task confidence of a fine-tuned multi-task model on an unlabeled pool (lower = harder).

Two estimates (Rotman & Reichart, TACL 2022), each in [0, 1]:

* **EC** (entropy confidence): 1 - normalised entropy of the predicted distribution.
  Classification types: H(p) / log C. Token tasks: the entropies at the labelled positions (the
  first sub-token of each word) summed and divided by (number of words x log C). Ranking: the
  entropy of the softmax over the candidates / log(number of candidates).
* **DA** (dropout agreement): `passes` forward passes with dropout on (seeded, reproducible) and
  the mean agreement over all pairs of passes: the fraction of agreeing pass pairs (sequence
  tasks; ranking: the top candidate), or the per-word accuracy of one pass against another
  (token tasks). Computed from class counts: sum_c n_c (n_c - 1) / (k (k - 1)).

Regression has no predicted distribution and is refused. Inference is batched, under
`torch.no_grad()` and autocast in the resolved precision (`precision="auto"`: bf16 where the
device runs it natively, else fp32; `ernie_style.precision`) on the model's device, with a tqdm
bar.
Predictions for pre-annotation come from one deterministic (eval-mode) pass: class names, a
score (regression), the top candidate's index (ranking) or one tag per word (None for a word
that truncation cut off; encoded examples carry their word count as `num_words`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ernie_style.active_learning.pool import NUM_WORDS
from ernie_style.finetune.data import IGNORE_INDEX, Encoded, EncodedTask
from ernie_style.precision import autocast as precision_autocast
from ernie_style.precision import resolve_precision

METHODS = ("ec", "da")


@dataclass
class PoolScores:
    """Confidences `(n, T)` (column j = `tasks[j]`) and readable predictions per task."""

    tasks: list[str]
    confidences: np.ndarray
    predictions: dict[str, list[Any]]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast on `device` in the resolved `precision` (auto, bf16, fp16 on CUDA, fp32/no)."""
    return precision_autocast(resolve_precision(precision, device.type), device)


def _check_type(task: EncodedTask) -> None:
    if task.type == "regression":
        raise ValueError(
            f"task {task.name!r} is a regression task: it predicts a score, not a distribution, "
            "so it has no entropy (EC) or label agreement (DA); leave it out of --tasks"
        )


def _word_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return batch["labels"] != IGNORE_INDEX


def entropy_confidence(
    logits: torch.Tensor, task_type: str, batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """EC per example [B]: 1 - normalised entropy (see the module docstring)."""
    logits = logits.float()
    if task_type == "ranking":
        mask = batch["candidate_mask"].bool()
        probs = torch.softmax(logits.masked_fill(~mask, -torch.inf), dim=-1)
        entropy = torch.special.entr(probs).sum(-1)
        norm = mask.sum(-1).clamp_min(2).double().log().float()
        return (1.0 - entropy / norm).clamp(0.0, 1.0)
    probs = torch.softmax(logits, dim=-1)
    norm = math.log(logits.shape[-1])
    entropy = torch.special.entr(probs).sum(-1) / norm
    if task_type != "token_classification":
        return (1.0 - entropy).clamp(0.0, 1.0)
    mask = _word_mask(batch)
    count = mask.sum(-1)
    mean = (entropy * mask).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, 1.0 - mean, torch.ones_like(mean)).clamp(0.0, 1.0)


def hard_predictions(
    logits: torch.Tensor, task_type: str, batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Class ids [B] (ranking: the top candidate) or tag ids [B, T] (token tasks)."""
    if task_type == "ranking":
        mask = batch["candidate_mask"].bool()
        return logits.float().masked_fill(~mask, -torch.inf).argmax(-1)
    return logits.argmax(-1)


def pass_agreement(
    predictions: torch.Tensor, num_classes: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean pairwise agreement [B] of `k` passes' predictions [k, B] (or [k, B, T] with a word
    mask [B, T]: per-word accuracy between two passes, averaged over words and pairs)."""
    passes = predictions.shape[0]
    if passes < 2:
        raise ValueError(f"dropout agreement needs at least 2 passes, got {passes}")
    counts = torch.nn.functional.one_hot(predictions, num_classes).sum(0).double()
    agreement = (counts * (counts - 1)).sum(-1) / (passes * (passes - 1))
    if mask is None:
        return agreement
    count = mask.sum(-1)
    mean = (agreement * mask).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.ones_like(mean))


def readable(
    logits: torch.Tensor,
    task: EncodedTask,
    batch: Mapping[str, torch.Tensor],
    examples: Sequence[Encoded] | None = None,
) -> list[Any]:
    """Per-example predictions in label names (see the module docstring). Token tasks: one
    tag per word, as many as the examples' `num_words` (None for words truncation cut off)."""
    names = task.labels or []
    if task.type == "regression":
        return logits.float().reshape(-1).tolist()
    ids = hard_predictions(logits, task.type, batch)
    if task.type == "ranking":
        return ids.tolist()
    if task.type != "token_classification":
        return [names[i] for i in ids.tolist()]
    out = []
    labels = batch["labels"]
    for row in range(ids.shape[0]):
        keep = labels[row] != IGNORE_INDEX
        words = labels[row][keep].tolist()
        size = max(words) + 1 if words else 0
        if examples is not None:
            size = max(size, int(examples[row].get(NUM_WORDS, size)))
        tags: list[str | None] = [None] * size
        for word, tag in zip(words, ids[row][keep].tolist(), strict=True):
            tags[word] = names[tag]
        out.append(tags)
    return out


def _batches(
    task: EncodedTask, examples: Sequence[Encoded], size: int, device: torch.device
) -> Iterator[tuple[Sequence[Encoded], dict[str, Any]]]:
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        batch = task.collator(chunk)
        yield chunk, {k: v.to(device) for k, v in batch.items()}


def _logits(model: Any, name: str, batch: Mapping[str, Any]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(inputs | {"task": name})
    return getattr(out, "logits", out).float()


def _lengths(encoded: Mapping[str, Sequence[Encoded]]) -> int:
    sizes = {name: len(examples) for name, examples in encoded.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every task must encode the same pool examples, got sizes {sizes}")
    return next(iter(sizes.values()))


def _device(model: Any, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def score_pool(
    model: Any,
    tasks: Mapping[str, EncodedTask],
    encoded: Mapping[str, Sequence[Encoded]],
    method: str = "ec",
    passes: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str = "auto",
    progress: bool = True,
) -> PoolScores:
    """Confidences of `model` on the encoded pool, one column per task of `encoded`.

    `model(batch | {"task": name})` returns logits or an object with `.logits` (a
    `MultiTaskModel`); `tasks[name]` gives the type, labels and collator; `encoded[name]` the
    pool encoded for that task (`pool.encode_pool`), all tasks over the same examples. DA runs
    `passes` dropout passes per batch, seeded with `seed` (the global RNG is restored after).
    """
    if method not in METHODS:
        raise ValueError(f"--method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    for name in encoded:
        _check_type(tasks[name])
    n = _lengths(encoded)
    device = _device(model, device)
    dropout_passes = passes if method == "da" else 0
    if method == "da" and passes < 2:
        raise ValueError(f"--passes: dropout agreement needs at least 2 passes, got {passes}")
    total = sum(-(-n // batch_size) for _ in encoded) * (1 + dropout_passes)
    confidences = np.zeros((n, len(encoded)), dtype=np.float64)
    predictions: dict[str, list[Any]] = {}
    was_training = getattr(model, "training", False)
    forks = [device] if device.type == "cuda" else []
    bar = tqdm(total=total, desc=f"scoring ({method})", unit="batch", disable=not progress)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=forks), autocast(device, precision):
            torch.manual_seed(seed)
            for column, (name, examples) in enumerate(encoded.items()):
                task, values, readable_out = tasks[name], [], []
                for chunk, batch in _batches(task, examples, batch_size, device):
                    model.eval()
                    logits = _logits(model, name, batch)
                    readable_out += readable(logits.cpu(), task, _cpu(batch), chunk)
                    bar.update(1)
                    if method == "ec":
                        values.append(entropy_confidence(logits, task.type, batch).cpu())
                        continue
                    model.train()
                    runs = []
                    for _ in range(dropout_passes):
                        runs.append(hard_predictions(_logits(model, name, batch), task.type, batch))
                        bar.update(1)
                    width = logits.shape[-1]
                    mask = _word_mask(batch) if task.type == "token_classification" else None
                    values.append(pass_agreement(torch.stack(runs), width, mask).cpu())
                confidences[:, column] = torch.cat(values).double().numpy() if values else []
                predictions[name] = readable_out
    finally:
        bar.close()
        model.train(was_training)
    return PoolScores(list(encoded), confidences, predictions)


def _cpu(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in batch.items()}


def predict_pool(
    model: Any,
    tasks: Mapping[str, EncodedTask],
    encoded: Mapping[str, Sequence[Encoded]],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, list[Any]]:
    """Eval-mode predictions (readable, see the module docstring) per task; any task type."""
    device = _device(model, device)
    n = _lengths(encoded)
    was_training = getattr(model, "training", False)
    out: dict[str, list[Any]] = {}
    bar = tqdm(
        total=sum(-(-n // batch_size) for _ in encoded),
        desc="predicting",
        unit="batch",
        disable=not progress,
    )
    try:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            for name, examples in encoded.items():
                out[name] = []
                for chunk, batch in _batches(tasks[name], examples, batch_size, device):
                    logits = _logits(model, name, batch).cpu()
                    out[name] += readable(logits, tasks[name], _cpu(batch), chunk)
                    bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return out
