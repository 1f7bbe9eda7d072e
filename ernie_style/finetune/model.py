"""The multi-task fine-tuning model: one shared encoder, an optional sharing layer (MMoE / PLE),
one head per task (MT-DNN). A task's head reads the top layer, or the layer its `head_layer`
names (selective supervision, Søgaard & Goldberg 2016: low-level tasks supervise low layers),
plus, with `reads_from`, other tasks' predicted class probabilities (asymmetric sharing: NER
reads the POS head's softmax; detached, so no gradient flows back into the sources).

`forward(batch)` takes one task's batch (`task` names it) or a list of them and returns
`TaskResult`s (task, loss, logits), the contract `ernie_style.train.step.StepRunner` trains with.
Ranking batches (`[Q, K, T]` query-candidate pairs) are flattened to `[Q*K, T]` for the encoder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig

from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import EncodedTask
from ernie_style.finetune.encoder_families import FamilyEncoder, encoder_from_pretrained
from ernie_style.finetune.heads import FinetuneHead, PointerHead, build_head
from ernie_style.finetune.sharing import SharingLayer, build_sharing
from ernie_style.tokenizer import load_tokenizer
from ernie_style.untrusted import refuse_pickle_weights, refuse_remote_code

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TaskResult:
    """One task batch's loss (None without labels) and logits."""

    task: str
    loss: torch.Tensor | None
    logits: torch.Tensor
    #: A regularisation term of the whole model (the sharing layer's `penalty`, e.g. the soft
    #: towers' L2 pull), set on the first result of a training forward; the step adds it once.
    penalty: torch.Tensor | None = None


def load_encoder(path: str | Path, trust_remote_code: bool = False) -> nn.Module:
    """A local Hugging Face encoder, never from a hub: `AutoModel` with its pooler (BERT,
    ERNIE), or a `FamilyEncoder` laid out as the family's stock task models (RoBERTa, XLM-R,
    DeBERTa-v2, ModernBERT, ELECTRA).

    A directory without `config.json` or without weights is refused with a message naming it;
    so is one whose only weights are pickles (`pytorch_model.bin`) or whose config names custom
    code (`auto_map`) unless `trust_remote_code` (the config key of that name) is set.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"encoder: {path} is not a model directory (no config.json)")
    refuse_pickle_weights(path, "encoder")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"encoder: {path} has a config.json but no weights (*.safetensors)")
    refuse_remote_code(path, "encoder", trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (ValueError, OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"encoder: {path}/config.json is not a usable model config: {error}"
        ) from error
    if getattr(config, "is_decoder", False):
        raise ValueError(f"encoder: {path} is a decoder, not a bidirectional encoder")
    return encoder_from_pretrained(path, config, trust_remote_code)


class MultiTaskModel(nn.Module):
    """Shared encoder + sharing layer + a `ModuleDict` of heads keyed by task name."""

    def __init__(
        self,
        encoder: nn.Module,
        heads: Mapping[str, FinetuneHead],
        sharing: SharingLayer,
        task_ids: Mapping[str, int] | None = None,
        head_layers: Mapping[str, int] | None = None,
        reads_from: Mapping[str, list[str]] | None = None,
        pointer: PointerHead | None = None,
        question_tasks: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.sharing = sharing
        self.heads = nn.ModuleDict(dict(heads))
        #: The answer pointer shared by every task phrased as questions (decaNLP), or None.
        self.pointer = pointer
        self.question_tasks = list(question_tasks or [])
        #: Task-embedding row per task, or None when the encoder has no task embeddings.
        self.task_ids = dict(task_ids) if task_ids is not None else None
        #: Tasks whose head reads a layer below the top (selective supervision): that layer.
        self.head_layers = dict(head_layers or {})
        #: Tasks whose head also reads other tasks' predictions (asymmetric sharing).
        self.reads_from = {t: list(s) for t, s in (reads_from or {}).items() if s}

    def forward(
        self, batch: Mapping[str, Any] | list[Mapping[str, Any]]
    ) -> TaskResult | list[TaskResult]:
        """Loss and logits of each task batch; a list gives a list (one call, DDP-friendly).
        In training mode the first result carries the sharing layer's `penalty`, if any."""
        results = [self._forward_one(b) for b in batch] if isinstance(batch, list) else None
        single = None if results is not None else self._forward_one(batch)
        first = results[0] if results else single
        if self.training and first is not None:
            first.penalty = self.sharing.penalty()
        return results if results is not None else single

    def encoder_inputs(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The encoder's inputs for a task batch (ranking groups flattened, task ids added)."""
        inputs = {k: batch[k] for k in ENCODER_INPUTS if k in batch}
        inputs = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}
        if self.task_ids is not None:
            task_id = self.task_ids[batch["task"]]
            inputs["task_type_ids"] = torch.full_like(inputs["input_ids"], task_id)
        return inputs

    def add_question_task(self, name: str, task_id: int = 0) -> None:
        """Let the shared pointer answer a task it never trained on (zero-shot questions):
        the sharing layer learns the name (new gates or towers start fresh; with `hard`
        nothing is added) and the task reads task-embedding row `task_id`."""
        if self.pointer is None:
            raise ValueError("the model has no pointer head (no task was phrased as questions)")
        if name in self.question_tasks:
            return
        if name not in self.sharing.tasks:
            self.sharing.add_task(name)
        self.question_tasks.append(name)
        if self.task_ids is not None:
            self.task_ids[name] = task_id

    def head_of(self, task: str) -> nn.Module:
        """The head that answers `task`: its own, or the shared pointer (question tasks)."""
        if task in self.question_tasks and self.pointer is not None:
            return self.pointer
        if task not in self.heads:
            raise KeyError(f"batch task {task!r} has no head; tasks: {list(self.heads)}")
        return self.heads[task]

    def _encoder_output(
        self, task: str, batch: Mapping[str, Any], cache: dict[Any, Any]
    ) -> tuple[Any, torch.Tensor | None]:
        """The encoder's output for `batch` as `task` sees it (its task-embedding row), run
        once per row within a forward pass (`cache`)."""
        key = None if self.task_ids is None else self.task_ids[task]
        if key not in cache:
            inputs = self.encoder_inputs({**batch, "task": task})
            # Selective supervision needs every layer's output: the layers above a task's
            # `head_layer` still run (a stock forward) but take no part in its loss.
            hidden_states = bool(self.head_layers) and not self.sharing.takes_encoder_top
            out = self.encoder(**inputs, output_hidden_states=hidden_states)
            cache[key] = (out, inputs.get("attention_mask"))
        return cache[key]

    def _view(
        self, task: str, out: Any, mask: torch.Tensor | None, pooled: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.sharing.takes_encoder_top:  # the encoder is the shared bottom; towers on top
            return self.sharing.encode_top(task, out.last_hidden_state, mask, pooled)
        layer = self.head_layers.get(task)
        if layer is None:
            return out.last_hidden_state, out.pooler_output if pooled else None
        hidden = out.hidden_states[layer]
        return hidden, self.encoder.pooler(hidden) if pooled else None

    def _head_input(
        self, task: str, batch: Mapping[str, Any], cache: dict[Any, Any]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(sequence, pooled) as the task's head reads them, with the predictions of the
        tasks it `reads_from` appended to the features."""
        reads_sequence = self.head_of(task).reads == "sequence"
        out, mask = self._encoder_output(task, batch, cache)
        hidden, pooled = self._view(task, out, mask, pooled=not reads_sequence)
        sequence_output, pooled_output = self.sharing(
            task, hidden if reads_sequence else None, pooled
        )
        sources = self.reads_from.get(task, [])
        if not sources:
            return sequence_output, pooled_output
        features = sequence_output if reads_sequence else pooled_output
        with torch.no_grad():  # asymmetric sharing: no gradient flows into the sources
            read = [self._probabilities(source, batch, cache) for source in sources]
        for probabilities in read:
            if reads_sequence and probabilities.dim() == 2:  # a per-text source, every token
                probabilities = probabilities[:, None, :].expand(-1, features.shape[1], -1)
            features = torch.cat([features, probabilities.to(features.dtype)], dim=-1)
        return (features, None) if reads_sequence else (None, features)

    def _probabilities(
        self, task: str, batch: Mapping[str, Any], cache: dict[Any, Any]
    ) -> torch.Tensor:
        """A source task's predicted class probabilities (no dropout): [B, C] or [B, T, C]."""
        head = self.heads[task]
        sequence_output, pooled_output = self._head_input(task, batch, cache)
        features = sequence_output if head.reads == "sequence" else pooled_output
        return torch.softmax(head.classifier(features).float(), dim=-1)

    def _forward_one(self, batch: Mapping[str, Any]) -> TaskResult:
        name = batch["task"]
        head = self.head_of(name)
        sequence_output, pooled_output = self._head_input(name, batch, {})
        extras = {k: v for k, v in batch.items() if k not in (*ENCODER_INPUTS, "labels", "task")}
        if head is self.pointer:  # the pointer masks padded positions out of its softmax
            extras["attention_mask"] = batch["attention_mask"].reshape(sequence_output.shape[:2])
        result = head(sequence_output, pooled_output, batch.get("labels"), **extras)
        return TaskResult(name, result.loss, result.logits)


def build_model(
    encoder: nn.Module,
    tasks: Mapping[str, EncodedTask],
    sharing: str,
    sharing_options: Mapping[str, Any],
    head_options: Mapping[str, Mapping[str, Any]],
    use_task_id: bool,
    seed: int,
) -> MultiTaskModel:
    """Heads (seeded) and the sharing layer for `tasks` over `encoder`."""
    hidden = encoder.config.hidden_size
    family = isinstance(encoder, FamilyEncoder)
    if not family and getattr(encoder, "pooler", None) is None:
        raise ValueError("encoder: the model has no pooler (save it with add_pooling_layer)")
    dropout = float(getattr(encoder.config, "hidden_dropout_prob", 0.1))
    torch.manual_seed(seed)
    if family:  # its pooled-output layers are new: seeded like the heads
        encoder.initialise_head()
    heads = {
        # A head that reads other tasks' predictions takes their class probabilities as well.
        name: build_head(
            task.type,
            hidden + sum(tasks[source].num_labels for source in task.reads_from),
            task.num_labels,
            dropout,
            **head_options.get(name, {}),
        )
        for name, task in tasks.items()
        if not task.is_question
    }
    questions = [name for name, task in tasks.items() if task.is_question]
    pointer = PointerHead(hidden, 2, dropout) if questions else None
    layer = build_sharing(sharing, hidden, list(tasks), **dict(sharing_options))
    num_layers = int(encoder.config.num_hidden_layers)
    head_layers = {}
    if family and (
        layer.takes_encoder_top or any(t.head_layer is not None for t in tasks.values())
    ):
        raise ValueError(
            f"encoder: sharing={sharing} towers and head_layer need a BERT or ERNIE encoder, "
            f"not {encoder.config.model_type} (its layers are not BERT's)"
        )
    if layer.takes_encoder_top:
        selective = [name for name, task in tasks.items() if task.head_layer is not None]
        if selective:
            raise ValueError(
                f"tasks {selective}: head_layer cannot be combined with sharing={sharing} "
                "(its towers replace the top layers)"
            )
        layer.attach(encoder)
    for name, task in tasks.items():
        if task.head_layer is not None and task.head_layer > num_layers:
            raise ValueError(
                f"task {name}: head_layer {task.head_layer} > the encoder's {num_layers} layers"
            )
        if task.head_layer is not None and task.head_layer < num_layers:
            head_layers[name] = task.head_layer
    task_ids = None
    if use_task_id:
        rows = int(getattr(encoder.config, "task_type_vocab_size", 0))
        if not getattr(encoder.config, "use_task_id", False) or rows == 0:
            raise ValueError("use_task_id: the encoder has no task embeddings")
        task_ids = {}
        for name, task in tasks.items():
            # Default row 0: in an ernie-style release, the knowledge-masking task's embedding.
            task_id = task.task_id if task.task_id is not None else 0
            if task_id >= rows:
                raise ValueError(f"task {name}: task_id {task_id} >= the encoder's {rows} rows")
            task_ids[name] = task_id
    reads_from = {name: list(task.reads_from) for name, task in tasks.items()}
    return MultiTaskModel(
        encoder, heads, layer, task_ids, head_layers, reads_from, pointer, questions
    )


def load_finetune_tokenizer(config: FinetuneConfig) -> Any:
    """The run's fast tokenizer (`tokenizer`, else the encoder directory); errors name the key."""
    key = "tokenizer" if config.tokenizer else "encoder"
    return load_tokenizer(config.tokenizer_path, key, config.trust_remote_code, special_tokens=())
