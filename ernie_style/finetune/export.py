"""Per-task exports that stock `transformers` loads offline.

Each task becomes `AutoModelForSequenceClassification` (classification, pair classification,
regression, ranking: one score per query-candidate pair) or `AutoModelForTokenClassification`
(token classification), with `id2label`/`label2id` in its config, the tokenizer next to it and
`ernie_style_task.json` (task name, type, labels, metrics) for `ernie-style evaluate`.

A task trained with a task id other than 0 gets that task-embedding row copied into row 0 of its
export, so the stock model (which defaults `task_type_ids` to zeros) gives the fine-tuned
logits without extra inputs. A task whose head reads layer n < L (`head_layer`) is exported with
n layers: the layers above never reach its head, so the stock model computes the same logits.
`hard` and `soft` sharing can be exported (a `soft` task's tower is folded back in as the top
layers and pooler); the mixtures and cross-stitch units have no stock counterpart.

The stock model is the encoder's own family: an ERNIE or BERT encoder gives `ErnieFor...` or
`BertFor...`, a RoBERTa encoder `RobertaFor...` (its pooler becoming `classifier.dense`), and so
on for XLM-R, DeBERTa-v2, ModernBERT and ELECTRA (`FamilyEncoder.stock_state`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from ernie_style.fileio import atomic_dir
from ernie_style.finetune.data import EncodedTask
from ernie_style.finetune.encoder_families import FamilyEncoder, stock_config
from ernie_style.finetune.heads import transformers_export_spec, transformers_head_state
from ernie_style.finetune.model import MultiTaskModel
from ernie_style.untrusted import refuse_pickle_weights, refuse_remote_code

TASK_FILE = "ernie_style_task.json"
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")


def export_task(
    model: MultiTaskModel,
    task: EncodedTask,
    metrics: list[str],
    tokenizer: Any,
    output: Path,
    precision: dict[str, str] | None = None,
) -> Path:
    """Write task `task.name` of `model` as a stock `transformers` model directory
    (`precision`: what the run trained in, recorded in its task file)."""
    head = model.heads[task.name]
    spec = transformers_export_spec(head)
    config = stock_config(model.encoder)
    head_layer = model.head_layers.get(task.name)
    if head_layer is not None:
        config.num_hidden_layers = head_layer  # the layers above it never reach this head
    config.num_labels = spec.num_labels
    config.problem_type = spec.problem_type
    if task.labels:
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
    token_level = spec.token_level
    auto = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    stock = auto.from_config(config, trust_remote_code=False)
    architecture = type(stock).__name__
    stock.config.architectures = [architecture]
    if task.name in model.reads_from:
        raise ValueError(f"task {task.name}: its head reads other tasks' predictions")
    if not model.sharing.exportable:
        raise ValueError(
            f"sharing={model.sharing.kind}: a task's path has no stock transformers counterpart"
        )
    if isinstance(model.encoder, FamilyEncoder):  # the family's own head layout
        kind = "token" if token_level else "sequence"
        stock.load_state_dict(model.encoder.stock_state(kind, head.classifier), strict=True)
    else:
        _load_bert_like(stock, model, task.name, token_level, head_layer)
        stock.classifier.load_state_dict(
            {k.removeprefix("classifier."): v for k, v in transformers_head_state(head).items()}
        )
    info = {
        "task": task.name,
        "type": task.type,
        "labels": task.labels,
        "metrics": metrics,
        "architecture": architecture,
        "trained_task_id": (model.task_ids or {}).get(task.name, 0),
        "head_layer": head_layer,
        "encoder_layers": int(model.encoder.config.num_hidden_layers),
        "precision": precision or {},
    }
    with atomic_dir(output) as tmp:  # the previous export stays until this one is complete
        stock.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output


def export_questions(
    model: MultiTaskModel,
    tasks: list[EncodedTask],
    tokenizer: Any,
    output: Path,
    precision: dict[str, str] | None = None,
) -> Path:
    """Write the shared pointer of the question tasks (decaNLP) as a stock
    `AutoModelForQuestionAnswering` directory: its `qa_outputs` is the pointer's linear layer,
    so the stock start/end logits are the fine-tuned ones (on unpadded positions)."""
    if model.pointer is None or model.sharing.kind != "hard":
        raise ValueError("the question tasks export only with a pointer head and hard sharing")
    stock = AutoModelForQuestionAnswering.from_config(
        stock_config(model.encoder), trust_remote_code=False
    )
    stock.config.architectures = [type(stock).__name__]
    if isinstance(model.encoder, FamilyEncoder):
        state = model.encoder.stock_state("question", model.pointer.classifier)
        stock.load_state_dict(state, strict=True)
    else:
        encoder_state = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("pooler.")}
        stock.base_model.load_state_dict(encoder_state, strict=True)
        stock.qa_outputs.load_state_dict(model.pointer.classifier.state_dict())
    info = {
        "task": "questions",
        "type": "question_answering",
        "tasks": [task.name for task in tasks],
        "architecture": type(stock).__name__,
        "precision": precision or {},
    }
    with atomic_dir(output) as tmp:
        stock.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output


def _load_bert_like(
    stock: torch.nn.Module,
    model: MultiTaskModel,
    task: str,
    token_level: bool,
    head_layer: int | None,
) -> None:
    """Load a BERT/ERNIE encoder into `stock.base_model`: the task's sharing path folded in,
    its task-embedding row as row 0, no pooler for token-level models, `head_layer` layers."""
    encoder_state = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    encoder_state |= {k: v.detach().clone() for k, v in model.sharing.fold_state(task).items()}
    task_id = (model.task_ids or {}).get(task, 0)
    key = "embeddings.task_type_embeddings.weight"
    if task_id and key in encoder_state:
        encoder_state[key][0] = encoder_state[key][task_id]
    if token_level:
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("pooler.")}
    if head_layer is not None:
        encoder_state = {
            k: v for k, v in encoder_state.items() if _layer_index(k) in (None, *range(head_layer))
        }
    stock.base_model.load_state_dict(encoder_state, strict=True)


def _layer_index(key: str) -> int | None:
    """The transformer layer a `encoder.layer.N.` state-dict key belongs to (None: no layer)."""
    match = _LAYER_KEY.match(key)
    return int(match.group(1)) if match else None


def load_exported(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A stock model from an export directory and its task description."""
    info_path = path / TASK_FILE
    if not info_path.is_file():
        raise ValueError(f"--model {path}: not an ernie-style task export (no {TASK_FILE})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    token_level = info["architecture"].endswith("TokenClassification")
    auto = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    if info["architecture"].endswith("QuestionAnswering"):
        auto = AutoModelForQuestionAnswering
    refuse_pickle_weights(path, f"--model {path}")
    refuse_remote_code(path, f"--model {path}")
    model = auto.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    _own_aligned_memory(model)
    return model, info


def _own_aligned_memory(model: torch.nn.Module) -> None:
    """Copy every weight into memory of torch's allocator (64-byte aligned). Tensors read from
    a safetensors file sit at arbitrary 4-byte offsets, and the CPU BLAS kernel of a layer with
    one output (regression, ranking) sums in an order that depends on that alignment: in place,
    the export's scores could differ from the trainer's in the last bit."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.data = tensor.data.clone()
