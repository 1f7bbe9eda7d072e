"""Pretraining runs for tests and benchmarks: a small prepared corpus, tiny configs, the
`ernie-style pretrain` command line and the per-step losses a run logs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ernie_style.testing import ROOT, child_env

__all__ = [
    "ROOT",
    "SAMPLE",
    "child_env",
    "make_small_corpus",
    "pretrain_cmd",
    "sample_subset",
    "step_losses",
    "write_config",
]

#: The bundled Wikipedia sample (100 articles, one JSON object a line).
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"


def sample_subset(path: Path, documents: int, paragraphs: int) -> Path:
    """Write the first `documents` sample articles, each cut to its first `paragraphs`
    paragraphs, to `path` (JSON lines); returns `path`."""
    with SAMPLE.open(encoding="utf-8") as f, path.open("w", encoding="utf-8") as out:
        for _, line in zip(range(documents), f, strict=False):
            row = json.loads(line)
            row["text"] = "\n\n".join(row["text"].split("\n\n")[:paragraphs])
            out.write(json.dumps(row) + "\n")
    return path


def make_small_corpus(root: Path) -> Path:
    """Prepare 20 sample articles (first 6 paragraphs each) under `root`: no annotator, a
    1500-token tokenizer trained on them. Returns the prepared corpus directory."""
    subset = sample_subset(root / "subset.jsonl", documents=20, paragraphs=6)
    corpus = root / "prepared"
    cmd = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(subset)]
    cmd += ["--output", str(corpus), "--annotator", "none", "--train-tokenizer", "1500"]
    subprocess.run(cmd, check=True, capture_output=True, env=child_env())
    return corpus


def write_config(path: Path, corpus: Path, output_dir: Path, **changes: Any) -> Path:
    """Write a tiny pretraining config to `path`: 3 tasks over 3 stages, 8 examples per step,
    sequence 64. `changes` override entries, nested keys joined by `__` (`optim__lr=1e-3`)."""
    config: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": 11,
        "batch_size": 8,
        "precision": "auto",
        "model": {"preset": "tiny"},
        "data": {"corpus": str(corpus), "max_seq_len": 64, "heldout_documents": 3},
        "tasks": {
            "knowledge_masking": {"budget": 12},
            "capitalization": {"budget": 8},
            "sentence_distance": {"budget": 6},
        },
        "optim": {"lr": 2.0e-3, "warmup_steps": 3},
        "checkpoint_every": 5,
        "keep_checkpoints": 10,
        "eval_every": 10,
        "log_every": 5,
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def pretrain_cmd(config: Path, *extra: str) -> list[str]:
    """The `python -m ernie_style pretrain --config CONFIG EXTRA...` command line."""
    return [sys.executable, "-m", "ernie_style", "pretrain", "--config", str(config), *extra]


def step_losses(run_dir: Path) -> dict[tuple[int, str], float]:
    """(step, task) -> loss from a run's train_loss.csv; a step logged twice keeps its last
    value."""
    out = {}
    with (run_dir / "train_loss.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[(int(row["step"]), row["task"])] = float(row["loss"])
    return out
