"""The multi-task pretraining model: an ERNIE backbone with task embeddings plus one head per
task, keyed by task name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import ErnieConfig, ErnieModel

from ernie_style.cpu_kernels import use_fast_dropout, uses_additive_mask, uses_fast_dropout
from ernie_style.pretrain.examples import MAX_SEGMENTS
from ernie_style.pretrain.packing import pack_batch, plan_packing
from ernie_style.pretrain.registry import PretrainTask

#: Encoder sizes (ERNIE/BERT conventions: intermediate = 4 x hidden, head size 64 from small up).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    # For tests and fixtures: ~25k parameters, a checkpoint of well under 1 MB.
    "micro": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}
#: Rows in the task-embedding table; room for user tasks beyond the seven built-in ones.
TASK_TYPE_VOCAB_SIZE = 16


def build_backbone_config(
    preset: str,
    vocab_size: int,
    pad_token_id: int = 0,
    max_position_embeddings: int = 512,
    **overrides: Any,
) -> ErnieConfig:
    """An `ErnieConfig` for a size preset, with task embeddings and 4 segment types."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {list(MODEL_PRESETS)}")
    sizes = dict(MODEL_PRESETS[preset])
    sizes["intermediate_size"] = 4 * sizes["hidden_size"]
    sizes.update(overrides)
    return ErnieConfig(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=MAX_SEGMENTS,
        use_task_id=True,
        task_type_vocab_size=TASK_TYPE_VOCAB_SIZE,
        **sizes,
    )


@dataclass
class TaskOutput:
    """What one forward pass gives for a single-task batch."""

    task: str
    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


class ErniePretrainingModel(nn.Module):
    """`ErnieModel` backbone + a `ModuleDict` of heads keyed by task name.

    `forward(batch)` runs the backbone once and the head of the batch's task, returning the
    task's loss, logits and targets (only at the positions the loss needs).
    """

    def __init__(
        self,
        backbone: ErnieModel,
        tasks: Mapping[str, PretrainTask],
        pack_sequences: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pack_sequences = pack_sequences
        self.heads = nn.ModuleDict()
        self.tasks: dict[str, PretrainTask] = {}
        for task in tasks.values():
            self.add_task(task)

    @property
    def config(self) -> ErnieConfig:
        """The backbone config."""
        return self.backbone.config

    def add_task(self, task: PretrainTask) -> None:
        """Create the head of a new task (e.g. when resuming with newly added tasks)."""
        if task.name in self.heads:
            raise ValueError(f"task {task.name!r} already has a head")
        rows = getattr(self.config, "task_type_vocab_size", TASK_TYPE_VOCAB_SIZE)
        if task.task_id >= rows:
            raise ValueError(
                f"task {task.name!r} has task id {task.task_id} but the model's task embedding "
                f"table has {rows} rows"
            )
        self.tasks[task.name] = task
        head = task.build_head(self.backbone)
        if uses_fast_dropout(self.backbone):
            use_fast_dropout(head)
        self.heads[task.name] = head

    def encode(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone sequence output [B, T, H] and pooled output [B, H].

        With `pack_sequences`, short examples share encoder rows when that saves work (see
        `ernie_style.pretrain.packing`); the outputs have the padded layout either way. The pooler
        is         applied to the padded-layout output on both paths, after the backbone (whose own
        pooler output is unused), so every batch runs the same modules in the same order whatever
        its data, which DeepSpeed ZeRO-3's parameter gathering requires across processes.
        """
        packable = self.pack_sequences and isinstance(self.backbone, ErnieModel)
        plan = plan_packing(batch["attention_mask"]) if packable else None
        if plan is not None and plan.worthwhile:
            additive = torch.float32 if uses_additive_mask(self.backbone) else None
            packed = pack_batch(batch, additive_mask_dtype=additive, plan=plan)
            sequence_output = packed.unpack(self.backbone(**packed.inputs).last_hidden_state)
        else:
            sequence_output = self.backbone(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
                task_type_ids=batch["task_type_ids"],
            ).last_hidden_state
        return sequence_output, self.backbone.pooler(sequence_output)

    def forward(
        self, batch: Mapping[str, Any] | list[Mapping[str, Any]]
    ) -> TaskOutput | list[TaskOutput]:
        """Loss, logits and targets of the batch's task; a list of single-task batches (one
        step of several tasks) gives a list of outputs from one call, which keeps DDP happy."""
        if isinstance(batch, list):
            return [self._forward_one(b) for b in batch]
        return self._forward_one(batch)

    def _forward_one(self, batch: Mapping[str, Any]) -> TaskOutput:
        name = batch["task"]
        if name not in self.heads:
            raise KeyError(f"batch task {name!r} has no head; model tasks: {list(self.heads)}")
        sequence_output, pooled_output = self.encode(batch)
        logits, targets = self.heads[name](sequence_output, pooled_output, batch["labels"])
        return TaskOutput(name, self.tasks[name].loss(logits, targets), logits, targets)
