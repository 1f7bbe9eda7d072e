"""A tiny local encoder release (ErnieModel + tokenizer) for fine-tuning tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import yaml
from transformers import ErnieModel

from ernie_style.pretrain.model import build_backbone_config
from ernie_style.tokenizer import train_wordpiece

ROOT = Path(__file__).resolve().parents[1]
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
    """Save a randomly initialised tiny ERNIE encoder (task embeddings on) and its tokenizer."""
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


def _absolute(task: dict) -> dict:
    task["data"] = {split: str(ROOT / path) for split, path in task["data"].items()}
    return task


def write_config(path: Path, encoder: Path, output: Path, tasks: list[dict], **top) -> Path:
    """A fine-tuning config for tests: fp32 (exact comparisons), small batches, high LR."""
    data = {
        "output_dir": str(output),
        "encoder": str(encoder),
        "precision": "fp32",  # exact comparisons (the pretraining helper uses auto)
        "epochs": 4,
        "lr": 1e-3,
        "warmup_ratio": 0.05,
        "batch_size": 16,
        "sampling": "proportional",
        "log_every": 5,
        "keep_checkpoints": 5,
        "tasks": tasks,
    } | top
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def shipped_tasks(*names: str) -> list[dict]:
    """Task sections of the shipped demo config, with absolute data paths."""
    tasks = yaml.safe_load(DEMO_CONFIG.read_text())["tasks"]
    return [_absolute(t) for t in tasks if t["name"] in names]


def step_losses(run_dir: Path) -> dict[int, tuple[str, float]]:
    """step -> (task, loss) from a run's train_loss.csv."""
    with (run_dir / "train_loss.csv").open() as handle:
        rows = list(csv.reader(handle))
    return {int(r[0]): (r[2], float(r[3])) for r in rows[1:]}
