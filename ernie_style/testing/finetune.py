"""Fine-tuning runs for tests and benchmarks: a tiny local encoder release (ErnieModel and
tokenizer), configs over the shipped fine-tuning tasks and the per-step losses a run logs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from ernie_style.testing import ROOT
from ernie_style.train.optim import OPTIM_KEYS

__all__ = [
    "DEMO_CONFIG",
    "FINETUNE_DATA",
    "ROOT",
    "finetune_texts",
    "make_encoder_dir",
    "run_suite_workers",
    "shipped_tasks",
    "step_losses",
    "write_config",
]

#: The shipped fine-tuning data sets and the demo config whose task sections tests reuse.
FINETUNE_DATA = ROOT / "data" / "finetune"
DEMO_CONFIG = ROOT / "configs" / "finetune" / "demo_multitask.yaml"


def finetune_texts() -> list[str]:
    """Training texts of the shipped fine-tuning sets (for a tokenizer that covers them)."""
    texts: list[str] = []
    for path in sorted(FINETUNE_DATA.glob("*/train.*")):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            if path.suffix == ".jsonl":
                row = json.loads(line)
                texts.append(" ".join(row.get("tokens") or [row.get("query", "")]))
                texts.extend(row.get("candidates") or [])
            else:
                texts.extend(line.split("\t")[:2])
    return texts


def make_encoder_dir(path: Path, vocab_size: int = 2000, seed: int = 0, **sizes: int) -> Path:
    """Save a randomly initialised tiny ERNIE encoder (task embeddings on) and a WordPiece
    tokenizer trained on the shipped fine-tuning texts to `path`. `sizes` override the
    backbone sizes (hidden 64, 2 layers, 2 heads; the intermediate size is 4x hidden)."""
    import torch
    from transformers import ErnieModel

    from ernie_style.pretrain.model import build_backbone_config
    from ernie_style.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(finetune_texts(), vocab_size=vocab_size, min_frequency=1)
    torch.manual_seed(seed)
    sizes = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2} | sizes
    sizes["intermediate_size"] = 4 * sizes["hidden_size"]
    config = build_backbone_config(
        "tiny", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes
    )
    ErnieModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def write_config(
    path: Path, encoder: Path, output: Path, tasks: list[dict[str, Any]], **top: Any
) -> Path:
    """Write a fine-tuning config to `path`: fp32 (exact comparisons), small batches, a high
    learning rate; `top` overrides top-level entries (optimizer keys go to `optim`)."""
    optim = {"lr": 1e-3, "warmup_ratio": 0.05} | {k: top.pop(k) for k in OPTIM_KEYS if k in top}
    data = {
        "output_dir": str(output),
        "encoder": str(encoder),
        "precision": "fp32",  # exact comparisons (the pretraining helper uses auto)
        "epochs": 4,
        "optim": optim,
        "batch_size": 16,
        "sampling": "proportional",
        "log_every": 5,
        "keep_checkpoints": 5,
        "tasks": tasks,
    } | top
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def shipped_tasks(*names: str) -> list[dict[str, Any]]:
    """The task sections `names` of the shipped demo config, with absolute data paths."""
    tasks = yaml.safe_load(DEMO_CONFIG.read_text())["tasks"]
    return [_absolute(t) for t in tasks if t["name"] in names]


def _absolute(task: dict[str, Any]) -> dict[str, Any]:
    task["data"] = {split: str(ROOT / path) for split, path in task["data"].items()}
    return task


def step_losses(run_dir: Path) -> dict[int, tuple[str, float]]:
    """The losses of a fine-tuning run's train_loss.csv: step -> (task, loss)."""
    with (run_dir / "train_loss.csv").open(encoding="utf-8") as handle:
        return {int(r["step"]): (r["task"], float(r["loss"])) for r in csv.DictReader(handle)}


def run_suite_workers(count: int, *args: Any, **kwargs: Any) -> dict[str, list]:
    """`run_suite(*args, **kwargs)` on `count` threads named w0, w1, ... at once: eval-suite
    workers sharing one output, as one per core would. Returns each worker's finished runs by
    thread name; a worker's error is re-raised here, in the caller's thread."""
    import threading

    from ernie_style.finetune.suite import run_suite

    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results[threading.current_thread().name] = run_suite(*args, **kwargs)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
