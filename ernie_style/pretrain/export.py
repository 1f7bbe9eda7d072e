"""Releases: a directory stock `transformers` loads offline.

config.json, model.safetensors   ErnieForMaskedLM layout (AutoModel and AutoModelForMaskedLM;
                                 the trained pooler is kept for AutoModel), use_task_id true
tokenizer files                  AutoTokenizer
pretraining_heads.safetensors    every task head, so `pretrain --resume RELEASE` continues
pretraining_tasks.json           task names, ids, levels, options, schedule history
README.md                        model card: tasks, task ids, stages, steps, tokens, corpus
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file
from transformers import CONFIG_MAPPING, ErnieConfig, ErnieForMaskedLM

from ernie_style.defaults import MLM_TASK
from ernie_style.fileio import atomic_dir
from ernie_style.pretrain.families import save_family_release
from ernie_style.tokenizer import load_tokenizer
from ernie_style.train.checkpoint import find_resumable, load_tensors, verify

RELEASE_MARKER = "pretraining_tasks.json"
HEADS_FILE = "pretraining_heads.safetensors"


def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """The named checkpoint (`step-N` or a path) or the newest complete one of a run."""
    root = run_dir / "checkpoints"
    if checkpoint:
        path = Path(checkpoint) if Path(checkpoint).is_dir() else root / checkpoint
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found under {root}")
        problem = verify(path)
        if problem:
            raise ValueError(f"checkpoint {path} is not usable: {problem}")
        return path
    found = find_resumable(root)
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to export")
    return found


def export_release(run_dir: str | Path, output: str | Path, checkpoint: str | None = None) -> Path:
    """Write a release of a run's checkpoint to `output` (built aside, then swapped in)."""
    run_dir, output = Path(run_dir), Path(output)
    source = resolve_checkpoint(run_dir, checkpoint)
    if output.exists() and any(output.iterdir()) and not (output / RELEASE_MARKER).is_file():
        raise ValueError(f"{output} exists and is not an ernie-style release; not overwriting it")
    state = json.loads((source / "trainer_state.json").read_text(encoding="utf-8"))
    run_config = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    weights = load_tensors(source / "model.safetensors")
    raw_config = json.loads((source / "backbone_config.json").read_text(encoding="utf-8"))
    if raw_config.get("model_type", "ernie") == "ernie":
        config = ErnieConfig.from_dict(raw_config)
        config.architectures = ["ErnieForMaskedLM"]
        write_model = _write_model
    else:  # another family: its stock *ForMaskedLM, without ERNIE's additions
        config = CONFIG_MAPPING[raw_config["model_type"]].from_dict(raw_config)
        write_model = save_family_release
    with atomic_dir(output) as tmp:  # the previous release stays until this one is complete
        write_model(weights, config, tmp)
        load_tokenizer(source / "tokenizer").save_pretrained(str(tmp))
        heads = {k: v for k, v in weights.items() if k.startswith("heads.")}
        save_file({k: v.contiguous() for k, v in heads.items()}, str(tmp / HEADS_FILE))
        tasks = _task_table(state, run_config)
        (tmp / RELEASE_MARKER).write_text(json.dumps(tasks, indent=1), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(tasks, config, source), encoding="utf-8")
    return output


def _write_model(weights: dict[str, Any], config: ErnieConfig, out: Path) -> None:
    model = ErnieForMaskedLM(config)
    mapped = {
        "ernie." + k.removeprefix("backbone."): v
        for k, v in weights.items()
        if k.startswith("backbone.") and not k.startswith("backbone.pooler.")
    }
    prefix = f"heads.{MLM_TASK}."
    for key, value in weights.items():
        if key.startswith(prefix):
            mapped["cls.predictions." + key.removeprefix(prefix)] = value
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    if unexpected or (set(missing) - tied - _mlm_keys(config, weights)):
        raise ValueError(f"cannot map weights to ErnieForMaskedLM: {missing} {unexpected}")
    model.save_pretrained(str(out), safe_serialization=True)
    # ErnieForMaskedLM has no pooler; keep the trained one so AutoModel (ErnieModel) gets it.
    path = out / "model.safetensors"
    tensors = load_file(str(path))
    for key, value in weights.items():
        if key.startswith("backbone.pooler."):
            tensors["ernie." + key.removeprefix("backbone.")] = value.contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _mlm_keys(config: ErnieConfig, weights: dict[str, Any]) -> set[str]:
    """Masked-LM head keys allowed to stay untrained when the run had no knowledge masking."""
    if any(k.startswith(f"heads.{MLM_TASK}.") for k in weights):
        return set()
    return {k for k in ErnieForMaskedLM(config).state_dict() if k.startswith("cls.")}


def _task_table(state: dict[str, Any], run_config: dict[str, Any]) -> dict[str, Any]:
    schedule = state["schedule"]
    tasks = {}
    for name, task_id in state["tasks"].items():
        per_stage = [stage.get(name, 0) for stage in schedule["stages"]]
        done = [stage.get(name, 0) for stage in schedule["done"]]
        tasks[name] = {
            "task_id": task_id,
            "iterations_per_stage": per_stage,
            "iterations_done": sum(done),
            "options": run_config.get("tasks", {}).get(name, {}).get("options", {}),
        }
    return {
        "format": 1,
        "tasks": tasks,
        "schedule": schedule,
        "steps": state["step"],
        "tokens_seen": state.get("tokens_seen", 0),
        "corpus": run_config.get("data", {}).get("corpus"),
        "max_seq_len": run_config.get("data", {}).get("max_seq_len"),
        "precision": state.get("precision") or {"dtype": run_config.get("precision", "unknown")},
    }


def _precision_line(precision: dict[str, str]) -> str:
    """e.g. `fp32 (precision auto: this CPU has no native bf16; AVX2)`."""
    dtype = precision.get("dtype", "unknown")
    if "requested" not in precision:
        return dtype
    return f"{dtype} (precision {precision['requested']}: {precision.get('reason', '')})"


def _is_ernie(config: Any) -> bool:
    return getattr(config, "model_type", "ernie") == "ernie"


def _additions_line(config: Any) -> str:
    if _is_ernie(config):
        return (
            f"task embeddings (`use_task_id: true`, {config.task_type_vocab_size} rows), "
            f"{config.type_vocab_size} segment types"
        )
    return (
        f"a stock `{config.model_type}` checkpoint (the task and extra segment rows used in "
        "pretraining are dropped: they are zero for the default task and segment)"
    )


def _task_ids_line(config: Any) -> str:
    if _is_ernie(config):
        return (
            "Pass `task_type_ids` (a tensor filled with a task id) to use a task's embedding; "
            "without it,\nthe model uses row 0."
        )
    return "The model takes the inputs of its architecture; it computes what pretraining did."


def _model_class(config: Any) -> str:
    if _is_ernie(config):
        return "ErnieModel"
    from transformers import MODEL_MAPPING

    return MODEL_MAPPING[type(config)].__name__


def model_card(tasks: dict[str, Any], config: ErnieConfig, source: Path) -> str:
    """The release's README.md."""
    rows = "\n".join(
        f"| `{name}` | {t['task_id']} | "
        + " / ".join(str(n) for n in t["iterations_per_stage"])
        + f" | {t['iterations_done']} |"
        for name, t in tasks["tasks"].items()
    )
    return f"""---
library_name: transformers
tags: [ernie, ernie-2.0, continual-pretraining, ernie-style]
---
# ERNIE 2.0-style encoder (ernie-style)

Continual multi-task pretraining: {tasks["steps"]} steps, {tasks["tokens_seen"]:,} tokens seen,
corpus `{tasks["corpus"]}`, sequence length {tasks["max_seq_len"]}, exported from `{source}`.
Trained in {_precision_line(tasks["precision"])}.
Encoder: {config.num_hidden_layers} layers, hidden {config.hidden_size},
{config.num_attention_heads} heads, vocabulary {config.vocab_size}, {_additions_line(config)}.

| task | task id | iterations per stage | iterations done |
|---|---|---|---|
{rows}

{_task_ids_line(config)}

```python
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline
tokenizer = AutoTokenizer.from_pretrained(PATH)
encoder = AutoModel.from_pretrained(PATH)          # {_model_class(config)}
fill = pipeline("fill-mask", model=PATH, tokenizer=PATH)
```

The pretraining heads are in `{HEADS_FILE}` (task list in `{RELEASE_MARKER}`), so
`ernie-style pretrain --resume PATH` can continue pretraining from this release.
"""
