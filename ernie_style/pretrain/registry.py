"""The pretraining-task contract and the registry of tasks by name.

A task is one module in `pretrain_tasks/` that subclasses `PretrainTask` and decorates it with
`@register_task`. The registered name is what configs and checkpoints store.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ernie_style.pretrain.examples import (
    IGNORE_INDEX,
    CorpusContext,
    Example,
    TokenizedDocument,
    assemble,
)
from ernie_style.pretrain.heads import TaskHead
from ernie_style.pretrain.losses import cross_entropy

TaskLevel = Literal["token", "sequence"]

_REGISTRY: dict[str, type[PretrainTask]] = {}


@dataclasses.dataclass
class TaskConfig:
    """Options shared by every task; a task subclasses this to add its own."""


class PretrainTask(ABC):
    """One ERNIE 2.0 pretraining objective.

    Subclasses set the class attributes, define `examples` and `build_head`, and may override
    `loss` and `metrics`. The default loss is cross-entropy over the head's logits and targets;
    the default metric is accuracy.
    """

    name: ClassVar[str]
    level: ClassVar[TaskLevel]
    description: ClassVar[str]
    #: Row of ERNIE's task-embedding table this task uses; unique across the registry.
    task_id: ClassVar[int]
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    #: Why the task has nothing to learn in a language, by language (e.g. capitalization on
    #: caseless Chinese): a run on such a corpus leaves the task out, with this reason.
    unusable_in: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        tokenizer: Any,
        max_seq_len: int = 128,
        config: TaskConfig | Mapping | None = None,
        language: str = "en",
    ) -> None:
        if max_seq_len < 8:
            raise ValueError(f"task {self.name}: max_seq_len must be >= 8, got {max_seq_len}")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.config = build_task_config(self.Config, config, self.name)
        #: The corpus language (`en`, `zh`, or `other`), from the prepared corpus.
        self.language = language

    @property
    @abstractmethod
    def num_labels(self) -> int:
        """Size of the label space (the vocabulary size for masked LM)."""

    @abstractmethod
    def examples(
        self, document: TokenizedDocument, rng: np.random.Generator, corpus: CorpusContext
    ) -> list[Example]:
        """Examples built from one document; empty when the document is too short."""

    def corpus_examples(self, rng: np.random.Generator, corpus: CorpusContext) -> list[Example]:
        """Examples not tied to one document (e.g. a user-supplied pair file), produced once
        per pass over the corpus. None by default.
        """
        return []

    def prepare(self, corpus: CorpusContext) -> None:
        """Build (or map) what the task needs across the corpus, before training forks its
        loader workers (e.g. IR relevance's BM25 index, saved next to the corpus). None by
        default."""
        del corpus

    def set_progress(self, fraction: float) -> None:
        """Told by the trainer how far (0..1) training has got; tasks with a curriculum (e.g.
        staged knowledge masking) override it; the default ignores it.
        """
        del fraction

    def word_label_example(
        self, document: TokenizedDocument, start: int, end: int, word_labels: list[int]
    ) -> Example | None:
        """`[CLS] words[start:end] [SEP]` with each word's label on its first sub-token; None
        when no token ends up labelled (e.g. only punctuation, or truncated away)."""
        labels = document.word_labels_to_tokens(start, end, word_labels)
        return self.token_label_example(document.tokens(start, end), labels)

    def token_label_example(self, tokens: Sequence[int], labels: Sequence[int]) -> Example | None:
        """`[CLS] tokens [SEP]` with per-token `labels`; None when no token ends up labelled."""
        tok = self.tokenizer
        ids, types, token_labels = assemble(
            [tokens], self.max_seq_len, tok.cls_token_id, tok.sep_token_id, [labels]
        )
        if token_labels is None or all(label == IGNORE_INDEX for label in token_labels):
            return None
        return Example(self.name, self.task_id, ids, types, token_labels)

    @abstractmethod
    def build_head(self, backbone: nn.Module) -> TaskHead:
        """The task's output head on top of `backbone` (an `ErnieModel`)."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; 0 (with a gradient path) when the batch has no target."""
        if targets.numel() == 0:
            return logits.sum() * 0.0
        return cross_entropy(logits, targets)

    def subset_metrics(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, tuple[float, float]]:
        """Extra held-out accuracies over subsets of the targets, as name -> (correct, count),
        e.g. sentence reordering without its one-segment examples. None by default."""
        del logits, targets
        return {}

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Accuracy over the targets (`count` is the number of targets scored)."""
        if targets.numel() == 0:
            return {"accuracy": 0.0, "count": 0.0}
        correct = (logits.argmax(-1) == targets).float().sum().item()
        return {"accuracy": correct / targets.numel(), "count": float(targets.numel())}


def build_task_config(
    config_cls: type[TaskConfig], config: TaskConfig | Mapping | None, task: str
) -> TaskConfig:
    """Turn a mapping into the task's config dataclass; unknown keys are errors naming the key."""
    if config is None:
        return config_cls()
    if isinstance(config, config_cls):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"task {task}: config must be a mapping, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"task {task}: unknown option(s) {unknown}; known options: {sorted(known) or 'none'}"
        )
    return config_cls(**config)


def register_task(cls: type[PretrainTask]) -> type[PretrainTask]:
    """Class decorator adding a task to the registry under `cls.name`."""
    for attr in ("name", "level", "description", "task_id"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must define class attribute {attr!r}")
    if cls.level not in ("token", "sequence"):
        raise TypeError(f"{cls.__name__}.level must be 'token' or 'sequence', got {cls.level!r}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"task name {cls.name!r} is already registered by {existing.__name__}")
    for other in _REGISTRY.values():
        if other.task_id == cls.task_id and other.name != cls.name:
            raise ValueError(f"task id {cls.task_id} of {cls.name!r} is used by {other.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_tasks() -> None:
    importlib.import_module("pretrain_tasks")


def registered_tasks() -> dict[str, type[PretrainTask]]:
    """All registered tasks by name, in task-id order."""
    _load_builtin_tasks()
    return dict(sorted(_REGISTRY.items(), key=lambda item: item[1].task_id))


def get_task(name: str) -> type[PretrainTask]:
    """The task class registered as `name`; the error lists the registered names."""
    tasks = registered_tasks()
    if name not in tasks:
        raise KeyError(f"unknown pretraining task {name!r}; registered tasks: {', '.join(tasks)}")
    return tasks[name]
