"""Rebuild a trained `MultiTaskModel` from a fine-tuning run directory (for inference).

A run directory (`ernie-style finetune`'s `output_dir`) holds `config.yaml` (the resolved,
validated config) and the weights of the best model in `best/model.safetensors`; without them
the newest complete checkpoint (`checkpoints/step-N/model.safetensors`) is used. The encoder
architecture and tokenizer come from the run's `encoder` (and `tokenizer`) directory, or from a
task export under `tasks/` when that directory is gone. The training data need not exist any
more: the config is read without checking data paths (it was checked when the run started).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from ernie_style.config import from_dict, read_yaml
from ernie_style.finetune.config import (
    DEFAULT_LABEL_FIELD,
    TASK_TYPES,
    FinetuneConfig,
    FinetuneTask,
)
from ernie_style.finetune.data import Collator, EncodedTask
from ernie_style.finetune.encoder_families import FamilyEncoder, encoder_from_config
from ernie_style.finetune.model import MultiTaskModel, build_model
from ernie_style.finetune.questions import QuestionCollator
from ernie_style.finetune.silver import silver_labels
from ernie_style.tokenizer import load_tokenizer
from ernie_style.untrusted import refuse_remote_code


@dataclasses.dataclass
class _RunConfig(FinetuneConfig):
    """A `FinetuneConfig` read back from a run: validated when the run started, so only the
    task sections are re-checked here (types and labels, not data paths)."""

    def validate(self) -> None:
        """Check each task's type and label list; data files may have moved since training."""
        if not self.tasks:
            raise ValueError("tasks: the run has no tasks")
        for i, task in enumerate(self.tasks):
            if task.type not in TASK_TYPES:
                raise ValueError(f"tasks[{i}].type: unknown type {task.type!r}")
            if task.label_field is None:
                task.label_field = DEFAULT_LABEL_FIELD[task.type]


def read_run_config(run_dir: str | Path) -> FinetuneConfig:
    """The `FinetuneConfig` of a run directory (`RUN_DIR/config.yaml`), data paths unchecked."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"--model {run_dir}: not a fine-tuning run directory (no config.yaml)")
    try:
        return from_dict(_RunConfig, read_yaml(path))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def task_labels(task: FinetuneTask, spacy_model: str) -> list[str] | None:
    """A task's label list: its own, or the silver scheme's (spaCy is loaded for silver:ner)."""
    if not task.is_silver:
        return task.label_list
    nlp: Any = None
    if task.labels == "silver:ner":
        from ernie_style.corpus.spacy_annotator import load_pipeline

        nlp = load_pipeline(spacy_model)
    return silver_labels(str(task.labels), nlp)


def find_weights(run_dir: str | Path) -> Path:
    """`best/model.safetensors`, else the newest complete checkpoint's weights."""
    run_dir = Path(run_dir)
    best = run_dir / "best" / "model.safetensors"
    if best.is_file():
        return best
    from ernie_style.train.checkpoint import find_resumable

    checkpoint = find_resumable(run_dir / "checkpoints")
    if checkpoint is None or not (checkpoint / "model.safetensors").is_file():
        raise ValueError(
            f"--model {run_dir}: no weights (neither best/model.safetensors nor a complete "
            "checkpoint under checkpoints/)"
        )
    return checkpoint / "model.safetensors"


def _model_dirs(config: FinetuneConfig, run_dir: Path, tokenizer: bool) -> list[Path]:
    first = Path(config.tokenizer_path if tokenizer else config.encoder)
    exports = sorted(p for p in (run_dir / "tasks").glob("*") if (p / "config.json").is_file())
    return [first, *exports]


def _load_encoder_shell(config: FinetuneConfig, run_dir: Path, trust_remote_code: bool) -> Any:
    """The encoder architecture (random weights; the run's weights are loaded afterwards)."""
    for path in _model_dirs(config, run_dir, tokenizer=False):
        if (path / "config.json").is_file():
            refuse_remote_code(path, f"--model {run_dir}: encoder", trust_remote_code)
            encoder_config = AutoConfig.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code
            )
            task_file = path / "ernie_style_task.json"
            if task_file.is_file():  # a `head_layer` export keeps fewer layers than the run
                info = json.loads(task_file.read_text(encoding="utf-8"))
                layers = info.get("encoder_layers", encoder_config.num_hidden_layers)
                encoder_config.num_hidden_layers = layers
            return encoder_from_config(encoder_config, trust_remote_code)
    raise ValueError(
        f"--model {run_dir}: the encoder directory {config.encoder} is gone and the run has no "
        "task export under tasks/ to read the architecture from"
    )


def _load_tokenizer(config: FinetuneConfig, run_dir: Path, trust_remote_code: bool) -> Any:
    for path in _model_dirs(config, run_dir, tokenizer=True):
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            key = f"--model {run_dir}: tokenizer"
            return load_tokenizer(path, key, trust_remote_code, special_tokens=())
    raise ValueError(f"--model {run_dir}: no tokenizer (looked in {config.tokenizer_path})")


def task_shells(
    config: FinetuneConfig, tokenizer: Any, labels: dict[str, list[str] | None]
) -> dict[str, EncodedTask]:
    """One data-less `EncodedTask` per task (type, labels, collator, task id), config order."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        task.name: EncodedTask(
            name=task.name,
            type=task.type,
            labels=labels[task.name],
            splits={},
            stats={},
            collator=QuestionCollator(pad_id) if task.is_question else Collator(task.type, pad_id),
            task_id=task.task_id,
            head_layer=task.head_layer,
            reads_from=list(task.reads_from),
            is_question=task.is_question,
        )
        for task in config.tasks
    }


def load_finetuned(
    run_dir: str | Path, device: str | torch.device = "cpu", trust_remote_code: bool = False
) -> tuple[MultiTaskModel, Any, FinetuneConfig, dict[str, EncodedTask]]:
    """`(model, tokenizer, config, tasks)` of a fine-tuning run, the model in eval mode on
    `device`. `tasks` maps each task name to a data-less `EncodedTask` (type, label list,
    collator, task id); silver tasks' label lists come from `silver_labels`.

    Custom model code (`auto_map`) is refused unless the caller passes `trust_remote_code`;
    the run's own `trust_remote_code` key is not honoured (a run directory may come from a
    stranger). Weights are read from safetensors only."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    weights = find_weights(run_dir)
    tokenizer = _load_tokenizer(config, run_dir, trust_remote_code)
    encoder = _load_encoder_shell(config, run_dir, trust_remote_code)
    device = torch.device(device)
    if device.type == "cpu" and not isinstance(encoder, FamilyEncoder):
        from ernie_style.cpu_kernels import use_cpu_kernels

        use_cpu_kernels(encoder)
    labels = {task.name: task_labels(task, config.spacy_model) for task in config.tasks}
    tasks = task_shells(config, tokenizer, labels)
    use_task_id = config.use_task_id
    if use_task_id is None:
        use_task_id = bool(getattr(encoder.config, "use_task_id", False))
    model = build_model(
        encoder, tasks, config.sharing, config.sharing_options, {}, use_task_id, config.seed
    )
    from safetensors.torch import load_file

    state = load_file(str(weights))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = Counter(k.split(".")[0] for k in result.missing_keys)
        raise ValueError(
            f"{weights}: the weights do not fit the run's config (missing {dict(missing)}: "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model.to(device).eval()
    return model, tokenizer, config, tasks
